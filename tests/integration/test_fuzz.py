"""Schemathesis against /api/v1/openapi.json, signed in with a token: a bounded number of generated requests
per operation (valid and invalid ones), zero 5xx and zero violations of the documented status codes, content
types and response schemas.

The cases come from one seed, so a run is reproducible: `make test` uses a fixed one, `make fuzz` a new one
each time with ten times the examples (DYNASCOPE_FUZZ_SEED, DYNASCOPE_FUZZ_SCALE). The seed is printed at the
top of pytest's output and in every failure, with the request that reproduces it."""

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from tests.conftest import OUTPUT_DIR
from tests.fuzzing import NEGATIVE, POSITIVE, SCALE, SEED, header

EXAMPLES = {GenerationMode.POSITIVE: POSITIVE, GenerationMode.NEGATIVE: NEGATIVE}
# A queued job's event stream stays open until the job ends; revoking its own token would sign the fuzzer out.
SKIPPED = {("GET", "/api/v1/jobs/{job_id}/events"), ("DELETE", "/api/v1/tokens/{token_id}")}
# Rules JSON Schema cannot state: across a job spec's fields (a CNN needs image data, a sweep's paths must exist,
# a checkpoint must have been kept; a tracked run's probes have the same rules) and inside an uploaded file. A schema-valid request may rightly get a 422
# naming the field there, so only "valid data is accepted" is not checked on these.
RULES_BEYOND_SCHEMA = {
    "/api/v1/jobs",
    "/api/v1/sweeps",
    "/api/v1/specs/validate",
    "/api/v1/jobs/{job_id}/analyses",
    "/api/v1/datasets",
    "/api/v1/runs",
    "/api/v1/runs/{job_id}/results",  # a document must fit its kind's schema
    "/api/v1/runs/{job_id}/artifacts",  # the body must be a safetensors file
    "/api/v1/jobs-table",  # a condition names a chosen column, a number for a numeric one; fields are spec paths
}

# An invalid request may also be refused for its size (413: the test client's body limit is 20 kB).
REFUSALS = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
CONFIG = schemathesis.Config.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": REFUSALS}}})


@pytest.mark.timeout(300 * SCALE)
def test_the_api_keeps_its_schema_and_never_answers_5xx(client):
    headers = {"host": "127.0.0.1"}
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", client.app, headers=headers, config=CONFIG)
    token = client.headers["authorization"]

    @schema.auth()
    class Token:  # known to schemathesis as the auth, so its check of requests without it can strip it
        def get(self, case, context) -> str:
            return token

        def set(self, case, data: str, context) -> None:
            case.headers = {**(case.headers or {}), "Authorization": data}

    requests: dict[str, int] = {}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        if (operation.method.upper(), operation.path) in SKIPPED:
            continue
        for mode, examples in EXAMPLES.items():

            @seed(SEED)
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
            def fuzz(case) -> None:
                requests[label] = requests.get(label, 0) + 1
                excluded = [positive_data_acceptance] if operation.path in RULES_BEYOND_SCHEMA else []
                case.call_and_validate(headers=headers, excluded_checks=excluded)

            try:
                fuzz()
            except Unsatisfiable:  # nothing to make invalid (an operation without parameters or body)
                continue
            except Exception as exc:  # every operation is tried; the failures are listed together
                failures.append(f"{label} ({mode.value}): {exc}")  # schemathesis' text ends with the curl to reproduce
    OUTPUT_DIR.mkdir(exist_ok=True)
    report = {
        "seed": SEED,
        "operations": len(requests),
        "requests": sum(requests.values()),
        "failures": len(failures),
        "per_operation": requests,
    }
    (OUTPUT_DIR / "fuzz.json").write_text(json.dumps(report, indent=1))
    assert len(requests) >= 40
    assert failures == [], f"{header()}\n\n" + "\n\n".join(failures)
