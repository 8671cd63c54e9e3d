"""Schemathesis against a real worker: every ingress operation of docs/ingress-openapi.yaml, with valid
(positive) and schema-violating (negative) requests, never gets a 5xx and only answers status codes the
document declares. Bounded: EXAMPLES per operation (7 operations, well under 2 minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

import tests.conftest as conftest

pytestmark = pytest.mark.integration

SPEC = Path(__file__).resolve().parents[2] / "docs" / "ingress-openapi.yaml"
EXAMPLES = 60
schema = schemathesis.openapi.from_path(SPEC)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=EXAMPLES)


def _headers(path: str) -> dict[str, str]:
    """Credentials the test worker accepts (tests/conftest.py), so requests reach the handlers."""
    if path.startswith("/api/") and hasattr(conftest, "api_headers"):
        return conftest.api_headers("responder")
    key = getattr(conftest, "INGRESS_KEY", None)
    return {"Authorization": f"Bearer {key}"} if key and not path.startswith("/pagerduty/") else {}


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_ingress_operations_never_answer_5xx(case, shared_worker):
    if case.path_parameters and "name" in case.path_parameters and len(repr(case.body)) % 2:
        case.path_parameters["name"] = "uptimebot"  # the example catalog's mapping: reach normalize_generic
    resp = case.call(base_url=shared_worker.url, headers=_headers(case.path), timeout=20)
    where = f"{case.method} {case.formatted_path} body={repr(case.body)[:300]}"
    assert resp.status_code < 500, f"{where} -> {resp.status_code} {resp.text[:300]}"
    if case.method.upper() != case.operation.method.upper():  # the coverage phase tries other methods too
        assert resp.status_code == 405, f"{where} -> {resp.status_code}"
        return
    declared = set(case.operation.definition.raw["responses"])
    assert str(resp.status_code) in declared, f"{where} -> undeclared {resp.status_code} {resp.text[:300]}"


# Found by the fuzzer: a non-string incident_id used to reach the Avro encoder and answer 503.
def test_feedback_with_a_non_string_incident_id_is_refused(shared_worker):
    import httpx

    body = {"incident_id": {}, "features": {}, "category": "infrastructure"}
    r = httpx.post(shared_worker.url + "/api/v1/feedback", json=body, headers=_headers("/api/v1/feedback"), timeout=20)
    assert r.status_code == 400, (r.status_code, r.text[:300])
