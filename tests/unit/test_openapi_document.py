"""The generated `/openapi.json` carries the response contract (in-process, no server)."""

from __future__ import annotations

from typing import Any

import pytest

from videoserve.api import create_app
from videoserve.api.schemas.contract import OPERATIONS
from videoserve.installs import Extra, missing
from videoserve.settings import Settings


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("data")))
    return app.openapi()


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): operation
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }


def test_every_table_entry_names_a_real_operation(document: dict[str, Any]) -> None:
    # A renamed or removed route must not leave a stale contract behind.
    assert set(OPERATIONS) - set(_operations(document)) == set()


def test_json_successes_have_a_model_and_errors_their_envelope(document: dict[str, Any]) -> None:
    for (method, path), operation in _operations(document).items():
        responses = operation["responses"]
        spec = OPERATIONS.get((method, path))
        if spec is not None and spec.ok is not None:
            schema = responses["200"]["content"]["application/json"]["schema"]
            assert schema == {"$ref": f"#/components/schemas/{spec.ok.__name__}"}, path
        envelope = "OpenAIError" if path.startswith("/v1/videos") else "SegmindError"
        errors = {code: r for code, r in responses.items() if code.startswith(("4", "5"))}
        if path != "/healthz":
            assert errors, f"{method} {path} documents no error answer"
        for code, response in errors.items():
            text = str(response["content"]["application/json"]["schema"])
            if code != "422":
                assert envelope in text, f"{method} {path} {code}: {text}"


def test_validation_errors_are_documented_as_400_not_fastapi_422(
    document: dict[str, Any],
) -> None:
    assert "HTTPValidationError" not in document["components"]["schemas"]
    submit = document["paths"]["/v2/{model}"]["post"]["responses"]
    assert {"400", "401", "404", "406", "413", "429", "503"} <= set(submit)
    assert "422" not in submit  # a submit never answers 422; a poll of a FAILED one does
    poll = document["paths"]["/v2/requests/{request_id}/status"]["get"]["responses"]
    assert poll["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/RequestStatusBody"
    )


def test_this_environment_is_the_full_install() -> None:
    # The test env is `.[worker,test]`; the fresh-venv installs are tests/acceptance.
    assert missing(Extra.worker) == []
