"""Whether FastAPI's native OpenTelemetry layer runs: only where OpenTelemetry is in use.

Why: FastAPI (0.165) asks on every request whether a tracer, meter or logger provider has been
configured, three environment look-ups and three provider checks: ~9 us of a ~80 us status
poll, on every server that never configured OpenTelemetry. So `create_app` decides once, when
the app is built: the layer stays on where OpenTelemetry is configured by then (an `OTEL_*`
variable, `FASTAPI_OTEL_AUTO_CONFIGURE=true`, or a tracer provider already set, as
`opentelemetry-instrument` does before the app is imported), and is off otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from fastapi.telemetry import TelemetryConfig
from opentelemetry import trace

OFF: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def fastapi_telemetry(environ: Mapping[str, str] = os.environ) -> TelemetryConfig | None:
    """FastAPI's `telemetry=` argument: None (its defaults) where OpenTelemetry is in use,
    else the layer turned off."""
    if opentelemetry_in_use(environ):
        return None
    return dict(OFF)  # type: ignore[return-value]


def opentelemetry_in_use(environ: Mapping[str, str] = os.environ) -> bool:
    if environ.get("FASTAPI_OTEL_AUTO_CONFIGURE", "").lower() == "true":
        return True
    if any(name.startswith("OTEL_") for name in environ):
        return True
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
