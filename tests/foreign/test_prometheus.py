"""Monitoring as an operator runs it: promtool accepts deploy/prometheus.yml and deploy/alerts.yml,
and a real Prometheus (Debian's package, installed by run.sh) scraping a running worker, with the
alert rules loaded, has a series for every alert expression and every Grafana panel query before
anything went wrong: no metric appears only after its first increment, so an alert on dead
letters or a panel of segment sizes works from the first scrape."""

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

from interop import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def alert_rules():
    """(name, expression) of every alerting rule in deploy/alerts.yml."""
    import yaml

    doc = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    return [(r["alert"], r["expr"]) for g in doc["groups"] for r in g["rules"] if "alert" in r]


def panel_queries():
    doc = json.loads((DEPLOY / "grafana" / "tailor.json").read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", []) if "expr" in t]


def series_behind(expr: str):
    """The parts of an alert expression that select series: each side of `and`/`or`/`unless`,
    without its threshold (a healthy worker's alert expression is empty by design)."""
    parts = re.split(r"\s+(?:and|or|unless)\s+", expr.strip())
    return [re.sub(r"\s*(==|!=|>=|<=|>|<)\s*-?[0-9.e+]+\s*$", "", p) for p in parts]


def test_series_behind_strips_thresholds_only():
    assert series_behind("up{job=\"tailor\"} == 0") == ['up{job="tailor"}']
    assert series_behind("sum(x) > 100000 and deriv(sum(x)[10m:]) > 0") == ["sum(x)", "deriv(sum(x)[10m:])"]


def test_promtool_accepts_the_shipped_configuration_and_rules():
    for args in (["check", "config", str(DEPLOY / "prometheus.yml")], ["check", "rules", str(DEPLOY / "alerts.yml")]):
        out = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr


def test_a_real_prometheus_finds_a_series_for_every_alert_and_panel(deploy, tmp_path):
    d = deploy("prometheus", partitions=2)
    worker = d.start()
    shutil.copy(DEPLOY / "alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        'rule_files: ["alerts.yml"]\n'
        "scrape_configs:\n  - job_name: tailor\n"
        f'    static_configs: [{{ targets: ["127.0.0.1:{d.port}"] }}]\n'
    )
    port = free_port()
    log = open(tmp_path / "prometheus.log", "w")
    prom = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )

    def api(path: str, **params):
        url = f"http://127.0.0.1:{port}/api/v1/{path}?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(expr: str):
        return api("query", query=expr)["result"]

    def ready():
        try:
            return query('count_over_time(up{job="tailor"}[1m]) >= 5') and query("tailor_assigned_partitions > 0")
        except OSError:
            return False

    try:
        wait_for("five scrapes of a worker with partitions", ready, timeout=90,
                 on_fail=lambda: (tmp_path / "prometheus.log").read_text()[-3000:])
        assert float(query('up{job="tailor"}')[0]["value"][1]) == 1.0
        exprs = [e for _, expr in alert_rules() for e in series_behind(expr)] + panel_queries()
        assert len(exprs) >= 15, exprs
        missing = [e for e in exprs if not query(e)]
        assert not missing, f"no series for: {missing}"
        # Every rule loaded and evaluated without error.
        rules = [r for g in api("rules")["groups"] for r in g["rules"]]
        assert sorted(r["name"] for r in rules) == sorted(n for n, _ in alert_rules())
        assert all(r["health"] == "ok" for r in rules), rules
        # Process metrics are there too.
        assert query("process_resident_memory_bytes"), "process metrics"
    finally:
        prom.terminate()
        prom.wait(timeout=30)
        log.close()
        worker.stop()
