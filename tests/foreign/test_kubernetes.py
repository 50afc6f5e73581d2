"""The Kubernetes manifests in deploy/kubernetes/, checked offline: every document against the
Kubernetes API's JSON schemas (kubernetes-validate, strict: an unknown or misspelt field fails),
the objects wired to each other (selectors, names, ports, probes), and the worker configuration
the ConfigMap carries accepted by `tailor check`."""

import copy
import os
import pathlib
import subprocess

import kubernetes_validate
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes still maintained upstream when this was written; the manifests use
# nothing newer.
VERSION = "1.31.0"


def manifests():
    """(file name, document) for every object in deploy/kubernetes (not the kustomization)."""
    out = []
    for f in sorted(K8S.glob("*.yaml")):
        if f.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(f.read_text()):
            if doc:
                out.append((f.name, doc))
    return out


def by_kind():
    return {doc["kind"]: doc for _, doc in manifests()}


def test_every_manifest_is_valid_against_the_kubernetes_schemas():
    kinds = []
    for name, doc in manifests():
        kubernetes_validate.validate(doc, VERSION, strict=True)
        kinds.append(doc["kind"])
    assert sorted(kinds) == sorted(
        ["ConfigMap", "Secret", "Service", "StatefulSet", "PodDisruptionBudget"]
    )


def test_the_validator_refuses_a_misspelt_field():
    sts = copy.deepcopy(by_kind()["StatefulSet"])
    sts["spec"]["replica"] = sts["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, VERSION, strict=True)


def test_the_kustomization_lists_every_manifest():
    k = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = sorted(f.name for f in K8S.glob("*.yaml") if f.name != "kustomization.yaml")
    assert sorted(k["resources"]) == files


def test_the_objects_are_wired_to_each_other():
    k = by_kind()
    sts, svc, pdb, cm, secret = (
        k["StatefulSet"],
        k["Service"],
        k["PodDisruptionBudget"],
        k["ConfigMap"],
        k["Secret"],
    )
    labels = sts["spec"]["template"]["metadata"]["labels"]
    for selector in (sts["spec"]["selector"]["matchLabels"], pdb["spec"]["selector"]["matchLabels"], svc["spec"]["selector"]):
        assert selector.items() <= labels.items()
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["clusterIP"] == "None", "headless: one name per pod"
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    # Static membership: the pod name is the worker's group.instance.id.
    env = {e["name"]: e for e in c["env"]}
    assert env["TAILOR_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert c["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    assert "TAILOR_HTTP_TOKEN" in secret["stringData"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["http"]
    config = cm["data"]["tailor.toml"]
    assert f'listen = "0.0.0.0:{port}"' in config
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    # State on the pod's own volume, where the config puts it.
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    assert 'path = "%s/state"' % mounts[claim] in config
    segments_dir = mounts["segments"]
    assert f'file = "{segments_dir}/segments.yaml"' in config
    # The pod's user owns the volume, and SIGTERM has time to finish the batch.
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"] == 10001
    assert pod["terminationGracePeriodSeconds"] >= 30


def configmap_files(tmp_path):
    """The ConfigMap's tailor.toml and segments.yaml written under tmp_path, with the pod's paths
    rewritten to it."""
    cm = by_kind()["ConfigMap"]
    (tmp_path / "segments.yaml").write_text(cm["data"]["segments.yaml"])
    config = (
        cm["data"]["tailor.toml"]
        .replace('"/var/lib/tailor/state"', '"%s"' % (tmp_path / "state"))
        .replace('"/etc/tailor/segments/segments.yaml"', '"%s"' % (tmp_path / "segments.yaml"))
    )
    assert config.count(str(tmp_path)) == 2, "the paths were rewritten"
    (tmp_path / "tailor.toml").write_text(config)


def test_the_configmaps_configuration_passes_tailor_check(tmp_path):
    configmap_files(tmp_path)
    env = dict(os.environ, TAILOR_INSTANCE_ID="tailor-0", TAILOR_HTTP_TOKEN="t" * 32)
    out = subprocess.run(
        [os.environ["TAILOR_BIN"], "check", "--config", str(tmp_path / "tailor.toml"),
         "--segments", str(tmp_path / "segments.yaml")],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 segments, 1 journeys OK" in out.stdout, out.stdout
    # The processing threads follow the pod's CPU request (it has no CPU limit, so the default,
    # one per core, would count the node's cores).
    container = by_kind()["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    cpus = int(container["resources"]["requests"]["cpu"])
    assert ("OK (2 segments, %d processing thread" % cpus) in out.stdout, out.stdout


def test_kafka_properties_from_the_secret_reach_librdkafka(tmp_path):
    """The Secret's TAILOR_KAFKA_* variables become librdkafka properties: a SASL mechanism
    this build lacks, given that way, fails the check naming it."""
    configmap_files(tmp_path)
    env = dict(
        os.environ,
        TAILOR_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        TAILOR_KAFKA_SASL_MECHANISMS="GSSAPI",
    )
    out = subprocess.run(
        [os.environ["TAILOR_BIN"], "check", "--config", str(tmp_path / "tailor.toml")],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "GSSAPI" in out.stdout, out.stdout
