"""`videoserve worker`'s own endpoint over HTTP: /metrics, /healthz and /readyz, where
VIDEOSERVE_WORKER_METRICS_HOST says (Prometheus and the kubelet reach them from elsewhere)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.acceptance.conftest import Processes
from tests.acceptance.test_workers import status, submit
from tests.conftest import free_port, wait_until


def probe(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5)
    except httpx.TransportError:
        return None


def start_worker(processes: Processes, name: str, host: str, **env: str) -> tuple[str, Path]:
    port = free_port()
    process, log = processes.start(
        "worker",
        name=name,
        VIDEOSERVE_WORKER_METRICS_PORT=str(port),
        VIDEOSERVE_WORKER_METRICS_HOST=host,
        **env,
    )
    url = f"http://{host}:{port}"

    def listening() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"worker exited: {log.read_text()}")
        return probe(url + "/healthz") is not None

    wait_until(listening, timeout=120, interval=0.1)
    return url, log


def test_a_preloaded_worker_is_healthy_ready_and_scrapable(processes: Processes) -> None:
    url, _ = start_worker(
        processes,
        "ready",
        "127.0.0.1",
        VIDEOSERVE_PRELOAD="tiny-t2v",
        VIDEOSERVE_WORKER_MODELS="tiny-t2v",
    )
    health = probe(url + "/healthz")
    assert health is not None and health.status_code == 200 and health.json() == {"status": "ok"}
    ready = wait_until(
        lambda: (r := probe(url + "/readyz")) is not None and r.status_code == 200 and r,
        timeout=120,
        interval=0.1,
    )
    body = ready.json()
    assert body["status"] == "ready" and body["models_failed"] == []
    assert [m["model"] for m in body["models_loaded"]] == ["tiny-t2v"]
    assert body["models_loaded"][0]["preloaded"] is True
    metrics = httpx.get(url + "/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert "videoserve_jobs_finished" in metrics.text
    # Its preload is a load: counted and timed on the worker's own endpoint.
    assert 'videoserve_model_loads_total{model="tiny-t2v"} 1.0' in metrics.text
    assert 'videoserve_model_load_seconds_count{model="tiny-t2v"} 1.0' in metrics.text
    assert httpx.get(url + "/nothing").status_code == 404


def test_a_worker_whose_models_all_fail_is_alive_but_not_ready(
    processes: Processes, tmp_path: Path
) -> None:
    # A weights folder whose pipeline cannot load: the registry lists it, the load fails.
    weights = tmp_path / "corrupt-wan"
    weights.mkdir()
    (weights / "model_index.json").write_text(
        json.dumps(
            {"_class_name": "WanPipeline", "transformer": ["diffusers", "WanTransformer3DModel"]}
        )
    )
    models = tmp_path / "models.toml"
    models.write_text(f'[models.corrupt]\nbackend = "diffusers"\npath = "{weights}"\n')
    url, _ = start_worker(
        processes,
        "corrupt",
        "127.0.0.1",
        VIDEOSERVE_MODELS=str(models),
        VIDEOSERVE_WORKER_MODELS="corrupt",
        VIDEOSERVE_PRELOAD="corrupt",
    )
    unready = wait_until(
        lambda: (r := probe(url + "/readyz")) is not None and r.json()["status"] != "loading" and r,
        timeout=120,
        interval=0.1,
    )
    assert unready.status_code == 503, unready.text
    assert unready.headers["retry-after"] == "2"
    body = unready.json()
    assert body["status"] == "unavailable" and "every model failed to load" in body["error"]
    assert [m["model"] for m in body["models_failed"]] == ["corrupt"]
    health = probe(url + "/healthz")  # alive: restarting it would not load the model either
    assert health is not None and health.status_code == 200


def test_the_metrics_host_setting_decides_where_the_worker_listens(processes: Processes) -> None:
    # 127.0.0.2 is loopback too (Linux routes all of 127/8 to lo), but another address:
    # answered there and refused on 127.0.0.1, the worker bound what the setting said.
    url, _ = start_worker(processes, "elsewhere", "127.0.0.2")
    port = url.rsplit(":", 1)[1]
    assert httpx.get(url + "/healthz").status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)


def test_the_worker_metrics_host_stays_loopback_by_default() -> None:
    from videoserve.settings import Settings

    assert Settings.model_fields["worker_metrics_host"].default == "127.0.0.1"


def test_a_worker_running_a_job_stays_healthy(processes: Processes) -> None:
    """The model runs in a thread: the loop still answers /healthz while a job is PROCESSING."""
    key = processes.run("keys", "create", "--name", "probes").stdout.strip().splitlines()[-1]
    url = processes.serve(VIDEOSERVE_EMBEDDED_WORKER="false")
    probes, _ = start_worker(processes, "busy", "127.0.0.1")
    # Many steps at the largest shape: the job is still running while we probe.
    request_id = submit(url, key, duration=12, size="1792x1024", num_inference_steps=60)
    wait_until(lambda: status(url, key, request_id).get("progress", 0) > 0, timeout=120)
    health = probe(probes + "/healthz")
    assert health is not None and health.status_code == 200, health and health.text
    assert status(url, key, request_id)["status"] == "PROCESSING"  # it was probed mid-job
