"""deploy/kubernetes: each overlay renders with `kubectl kustomize`, every object validates
against Kubernetes 1.32's schemas (kubernetes-validate, strict: unknown fields refused), and
KEDA's ScaledObjects against the CRD's schema kept in deploy/kubernetes/schemas. Then what the
schemas cannot say: probes on the ports the settings open, drains inside the grace period, one
ScaledObject per worker pool on that pool's models, secrets by reference only."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.acceptance.deploy_files import DEPLOY, unknown_settings

KUBERNETES = DEPLOY / "kubernetes"
OVERLAYS = ["cpu-demo", "gpu-fleet"]
KEDA_SCHEMA = KUBERNETES / "schemas/keda-scaledobject-v1alpha1.json"


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: nothing here renders kustomize")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(request.param)


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def workers(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        name: d
        for name, d in of_kind(objects, "Deployment").items()
        if d["spec"]["template"]["spec"]["containers"][0]["args"] == ["worker"]
    }


def config(objects: list[dict[str, Any]]) -> dict[str, str]:
    (found,) = [
        c["data"]
        for name, c in of_kind(objects, "ConfigMap").items()
        if name.startswith("videoserve-config")
    ]
    return found


def env_of(container: dict[str, Any], objects: list[dict[str, Any]]) -> dict[str, str]:
    """What the container sees: the ConfigMap's values, then its own `env`."""
    return config(objects) | {
        e["name"]: e["value"] for e in container.get("env", []) if "value" in e
    }


def test_every_object_validates_against_kubernetes_1_32(objects: list[dict[str, Any]]) -> None:
    checked = 0
    for document in objects:
        if document["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: the next test
        kubernetes_validate.validate(document, "1.32.0", strict=True)
        checked += 1
    assert checked >= 8


def test_scaled_objects_validate_against_kedas_schema(objects: list[dict[str, Any]]) -> None:
    validator = jsonschema.Draft202012Validator(json.loads(KEDA_SCHEMA.read_text()))
    scaled = of_kind(objects, "ScaledObject")
    assert scaled
    for name, scaled_object in scaled.items():
        errors = [e.message for e in validator.iter_errors(scaled_object)]
        assert errors == [], name


def test_the_keda_schema_refuses_what_keda_refuses(objects: list[dict[str, Any]]) -> None:
    validator = jsonschema.Draft202012Validator(json.loads(KEDA_SCHEMA.read_text()))
    good = next(iter(of_kind(objects, "ScaledObject").values()))
    for path, value in (
        (("spec", "triggers", 0, "metadata", "threshold"), 1),  # metadata values are strings
        (("spec", "minReplicaCount"), -1),
        (("spec", "scaleTarget"), {"name": "x"}),  # a misspelt field
    ):
        bad = copy.deepcopy(good)
        target = bad
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        assert not validator.is_valid(bad), path
    missing = copy.deepcopy(good)
    del missing["spec"]["triggers"][0]["metadata"]["query"]
    assert not validator.is_valid(missing)


def test_each_worker_pool_scales_from_zero_on_its_own_queue(objects: list[dict[str, Any]]) -> None:
    pools = workers(objects)
    scaled = {
        s["spec"]["scaleTargetRef"]["name"]: s for s in of_kind(objects, "ScaledObject").values()
    }
    assert set(scaled) == set(pools), "one ScaledObject per worker pool"
    for name, pool in pools.items():
        assert "replicas" not in pool["spec"], f"{name}: KEDA owns the replica count"
        spec = scaled[name]["spec"]
        assert spec["minReplicaCount"] == 0 and spec["maxReplicaCount"] >= 1
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "prometheus"
        models = env_of(pool["spec"]["template"]["spec"]["containers"][0], objects)[
            "VIDEOSERVE_WORKER_MODELS"
        ]
        query = trigger["metadata"]["query"]
        assert f'videoserve_queue_depth{{model=~"{models.replace(",", "|")}"}}' in query, name


def test_workers_drain_within_the_grace_period_and_answer_their_probes(
    objects: list[dict[str, Any]],
) -> None:
    for name, pool in workers(objects).items():
        pod = pool["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = env_of(container, objects)
        assert pod["terminationGracePeriodSeconds"] >= float(env["VIDEOSERVE_DRAIN_SECONDS"]), name
        assert env["VIDEOSERVE_WORKER_METRICS_HOST"] == "0.0.0.0"
        port = {p["name"]: p["containerPort"] for p in container["ports"]}["probes"]
        assert str(port) == env["VIDEOSERVE_WORKER_METRICS_PORT"]
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "probes"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "probes"}
        annotations = pool["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port)


def test_the_api_has_probes_a_service_and_a_disruption_budget(
    objects: list[dict[str, Any]],
) -> None:
    api = of_kind(objects, "Deployment")["videoserve-api"]
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert env_of(container, objects)["VIDEOSERVE_EMBEDDED_WORKER"] == "false"
    labels = api["spec"]["template"]["metadata"]["labels"]
    service = of_kind(objects, "Service")["videoserve-api"]
    assert service["spec"]["selector"].items() <= labels.items()
    budget = of_kind(objects, "PodDisruptionBudget")["videoserve-api"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_models_file_and_settings_are_real(objects: list[dict[str, Any]], tmp_path: Path) -> None:
    from videoserve.models.registry import load_models_file

    (models,) = [
        c["data"]["models.toml"]
        for name, c in of_kind(objects, "ConfigMap").items()
        if name.startswith("videoserve-models")
    ]
    (tmp_path / "models.toml").write_text(models)
    entries, _aliases = load_models_file(tmp_path / "models.toml")
    served = {"tiny-t2v"} | {e.name for e in entries}
    for name, deployment in of_kind(objects, "Deployment").items():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            if not container["image"].rsplit("/", 1)[-1].startswith("videoserve"):
                continue
            env = env_of(container, objects)
            assert unknown_settings(env) == [], name
            mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            assert mounts["models"] + "/models.toml" == env["VIDEOSERVE_MODELS"], name
            assert mounts["weights"] == env["HF_HOME"], name
            pool_models = env.get("VIDEOSERVE_WORKER_MODELS")
            if pool_models:
                assert set(pool_models.split(",")) <= served, name
            assert {"secretRef": {"name": "videoserve-secrets"}} in container["envFrom"]


def test_the_gpu_fleet_asks_for_gpus_and_holds_no_secret() -> None:
    objects = render("gpu-fleet")
    assert of_kind(objects, "Secret") == {}, "secrets are created out of band and referenced"
    pools = workers(objects)
    assert len(pools) >= 2
    for name, pool in pools.items():
        (container,) = pool["spec"]["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1, name
        assert container["image"].endswith(":cuda"), name
    api = of_kind(objects, "Deployment")["videoserve-api"]
    assert "nvidia.com/gpu" not in str(api)
