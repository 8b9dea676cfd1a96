"""FastAPI's OpenTelemetry layer runs only where OpenTelemetry is in use."""

from __future__ import annotations

from fastapi import FastAPI

from videoserve.observability import telemetry


def test_off_without_opentelemetry_and_on_with_it() -> None:
    assert telemetry.fastapi_telemetry({}) == telemetry.OFF
    assert telemetry.fastapi_telemetry({"PATH": "/bin"}) == telemetry.OFF
    assert telemetry.fastapi_telemetry({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}) is None
    assert telemetry.fastapi_telemetry({"FASTAPI_OTEL_AUTO_CONFIGURE": "TRUE"}) is None


def test_the_off_config_turns_fastapis_layer_off() -> None:
    # The check that runs per request, on FastAPI's own object: what the config promises.
    config = telemetry.fastapi_telemetry({})
    app = FastAPI(telemetry=config)
    assert app._native_telemetry.enabled() is False
    assert FastAPI(telemetry=None)._native_telemetry.config["tracing"] is True
