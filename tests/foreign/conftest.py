"""Fixtures of the foreign-client interop tests (see interop.py and README.md's Testing section)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import interop  # noqa: E402
from registry_standin import RegistryStandIn  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def _failed(request) -> bool:
    return any(getattr(request.node, f"rep_{w}", None) is not None and getattr(request.node, f"rep_{w}").failed
               for w in ("setup", "call"))


@pytest.fixture(scope="session")
def tailor_bin() -> str:
    try:
        return interop.tailor_bin()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def brokers(tailor_bin) -> str:
    try:
        return interop.brokers()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def deploy(request, tmp_path, brokers):
    """deploy(name, partitions, **config) -> interop.Deployment; workers are killed at the end and
    their logs printed when the test failed."""
    made = []

    def make(name: str, partitions: int = 1, **config) -> interop.Deployment:
        dir = tmp_path / f"{name}-{len(made)}"
        dir.mkdir()
        d = interop.Deployment(name, partitions, dir, **config)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()
        if _failed(request):
            for w in d.workers:
                print(f"\n===== worker log {w.log} =====\n{w.log_text()}")


@pytest.fixture
def registry():
    """registry(**options) -> a started RegistryStandIn on a free loopback port, stopped at the end."""
    made = []

    def make(**options) -> RegistryStandIn:
        r = RegistryStandIn(**options).start()
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()
