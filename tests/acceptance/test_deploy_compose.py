"""deploy/compose.yaml works as written: every image is built or pulled, every file it names
exists, the credentials agree, and every setting it passes is one videoserve reads.

No container engine runs here (the image test builds and runs the image itself): these are the
mistakes a `docker compose up` would only show one at a time, on a GPU host.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.acceptance.deploy_files import DEPLOY, ROOT, env_file, unknown_settings

COMPOSE = DEPLOY / "compose.yaml"
REQUIRED = re.compile(r"\$\{(\w+):\?[^}]*\}")
VARIABLE = re.compile(r"\$\{(\w+)(?::?[-?][^}]*)?\}")
INTERPOLATION = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's own substitution: ${X}, ${X:-default}, ${X:?error} (an error when X is unset
    or empty), and $$ for a literal $."""

    def value(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.groups()
        found = env.get(name, "")
        if operator == ":?" and not found:
            raise AssertionError(f"compose would stop: {name} {argument}")
        return found or (argument if operator == ":-" else "")

    return INTERPOLATION.sub(value, text)


def example_env() -> dict[str, str]:
    """compose/env.example as a user fills it in: every blank secret given a value."""
    return {
        name: value or f"test-{name.lower()}"
        for name, value in env_file(DEPLOY / "compose/env.example").items()
    }


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(interpolate(COMPOSE.read_text(), example_env()))


def test_compose_stops_while_a_secret_is_unset() -> None:
    env = example_env()
    del env["POSTGRES_PASSWORD"]
    with pytest.raises(AssertionError, match=r"POSTGRES_PASSWORD set it in \.env"):
        interpolate(COMPOSE.read_text(), env)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment as a mapping, so anchors can merge it"
    return {key: str(value) for key, value in env.items()}


def test_every_image_is_built_here_or_pulled_by_a_pinned_name(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service.get("image")
        assert image, f"{name}: no image"
        if "build" in service:
            context = (COMPOSE.parent / service["build"]["context"]).resolve()
            assert context == ROOT, f"{name}: builds from the repository's root"
            assert (context / service["build"]["dockerfile"]).is_file(), name
            assert service["build"]["args"]["VARIANT"] in ("cpu", "cuda"), name
        else:
            registry, _, rest = image.partition("/")
            assert "." in registry, f"{name}: {image} names its registry"
            assert ":" in rest and not rest.endswith(":latest"), f"{name}: {image} is pinned"


def test_every_referenced_file_exists(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes", {}))
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source, target, *_ = volume.split(":")
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).is_file(), f"{name}: {source} is missing"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
            assert target.startswith("/"), f"{name}: {volume}"
        for other in service.get("depends_on", {}):
            assert other in compose["services"], f"{name} depends on unknown {other}"
    nginx = (COMPOSE.parent / "compose/nginx.conf").read_text()
    assert "server api:8000 resolve;" in nginx  # the proxy finds the API replicas by name


def test_every_required_variable_is_in_the_example_env_file(compose: dict[str, Any]) -> None:
    example = env_file(DEPLOY / "compose/env.example")
    used = set(VARIABLE.findall(COMPOSE.read_text()))
    assert set(REQUIRED.findall(COMPOSE.read_text())) <= set(example)
    assert set(example) <= used, "the example sets only what compose.yaml reads"


def test_the_credentials_and_the_bucket_agree(compose: dict[str, Any]) -> None:
    services = compose["services"]
    api = environment(services["api"])
    store = environment(services["s3"])
    assert store["MINIO_ROOT_USER"] == api["VIDEOSERVE_S3_ACCESS_KEY_ID"]
    assert store["MINIO_ROOT_PASSWORD"] == api["VIDEOSERVE_S3_SECRET_ACCESS_KEY"]
    database = urlsplit(api["VIDEOSERVE_DATABASE_URL"])
    db = environment(services["db"])
    assert database.username == db["POSTGRES_USER"] and database.password == db["POSTGRES_PASSWORD"]
    assert database.hostname == "db" and database.path == "/" + db["POSTGRES_DB"]
    bucket_step = services["create-bucket"]
    bucket = urlsplit(api["VIDEOSERVE_STORAGE_URL"]).hostname
    assert environment(bucket_step)["BUCKET"] == bucket
    assert environment(bucket_step)["S3_ACCESS_KEY_ID"] == store["MINIO_ROOT_USER"]
    for setting in ("VIDEOSERVE_DATABASE_URL", "VIDEOSERVE_REDIS_URL"):
        host = urlsplit(api[setting]).hostname
        assert services["api"]["depends_on"][host] == {"condition": "service_healthy"}, setting
    for name in ("api", "worker-gpu0", "worker-gpu1"):
        waits = services[name]["depends_on"]
        assert waits["create-bucket"] == {"condition": "service_completed_successfully"}
        assert waits["db"] == {"condition": "service_healthy"}
    # Clients and containers reach the store at one address: presigned URLs name it.
    endpoint = urlsplit(api["VIDEOSERVE_S3_ENDPOINT"])
    assert services["s3"]["networks"]["default"]["aliases"] == [endpoint.hostname]
    assert endpoint.port == 9000 and "9000:9000" in services["s3"]["ports"]
    command = bucket_step["command"][0]
    assert '"$S3_ACCESS_KEY_ID"' in command and '"store/$BUCKET"' in command  # $$ became $


def test_api_replicas_share_one_port_and_each_gpu_has_a_worker(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["api"]["deploy"]["replicas"] >= 2
    assert "ports" not in services["api"], "replicas cannot share a host port: the proxy has it"
    assert services["proxy"]["depends_on"]["api"] == {"condition": "service_healthy"}
    workers = {name: s for name, s in services.items() if s.get("command") == ["worker"]}
    assert len(workers) >= 2
    devices = []
    for name, worker in workers.items():
        (reservation,) = worker["deploy"]["resources"]["reservations"]["devices"]
        assert reservation["capabilities"] == ["gpu"], name
        devices += reservation["device_ids"]
        assert worker["build"]["args"]["VARIANT"] == "cuda"
        # stop_grace_period above the drain: the running job may finish on `docker compose stop`.
        drain = int(environment(worker)["VIDEOSERVE_DRAIN_SECONDS"])
        assert int(worker["stop_grace_period"].removesuffix("m")) * 60 > drain
    assert len(devices) == len(set(devices)), "one GPU per worker"


def test_every_process_reads_the_models_file_and_the_weights_cache(
    compose: dict[str, Any],
) -> None:
    from videoserve.models.registry import load_models_file

    for name, service in compose["services"].items():
        if service.get("image", "").startswith("localhost/videoserve"):
            env = environment(service)
            mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
            models = mounts[env["VIDEOSERVE_MODELS"]]
            assert mounts[env["HF_HOME"]] == "weights", name
            entries, aliases = load_models_file(COMPOSE.parent / models)
            assert entries and aliases["sora-2-pro"] in {e.name for e in entries}, name


def test_every_videoserve_variable_is_a_setting(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert unknown_settings(environment(service)) == [], name
    assert unknown_settings(env_file(DEPLOY / "compose/env.example")) == []
