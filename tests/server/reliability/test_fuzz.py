"""Fuzz: generated requests over every route of a real gateway process (hypothesis, fixed
seed): none may be answered with a 5xx, every error must be in an error envelope, and none may
hang (the client's timeout fails the test).

VLMGW_FUZZ_EXAMPLES sets the count (default 2,000, the CI figure of docs/reliability.md):
    VLMGW_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest -q tests/server/reliability/test_fuzz.py
"""

import json
import os
from collections import Counter

import httpx
import pytest
from hypothesis import HealthCheck, given, seed, settings

from tests.server.reliability.fuzz_requests import REQUESTS, FuzzRequest
from tests.support.processes import GatewayProcess
from tests.support.status_upstream import StatusUpstream

EXAMPLES = int(os.environ.get("VLMGW_FUZZ_EXAMPLES", "2000"))
statuses: Counter[int] = Counter()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    work = tmp_path_factory.mktemp("fuzz")
    with StatusUpstream() as upstream:
        entry = {"backend": "openai", "base_url": upstream.base_url}
        config = {
            "data_dir": str(work / "data"),
            "models": [
                {"name": "m", "input_modalities": ["text", "image", "video", "audio"], **entry},
                {"name": "m", **entry},  # a replica: its first entry decides the modalities
                {"name": "text-only", "input_modalities": ["text"], **entry},
            ],
        }
        process = GatewayProcess(config, work).start()
        with process, httpx.Client(base_url=process.url, timeout=30) as client:
            yield client


def is_envelope(body: object) -> bool:
    """OpenAI's `{"error": {"message", "type", ...}}` or Anthropic's `{"type": "error", ...}`."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return False
    error = body["error"]
    return isinstance(error.get("message"), str) and isinstance(error.get("type"), str)


def send(client: httpx.Client, request: FuzzRequest) -> httpx.Response:
    return client.request(
        request.method,
        request.path,
        content=request.body,
        files=request.files,
        data=request.data or None,
        headers={"content-type": "application/json"} if request.body is not None else None,
    )


@seed(15)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
@given(request=REQUESTS)
def test_no_request_gets_a_5xx_or_a_bare_error_or_hangs(gateway, request):
    reply = send(gateway, request)
    statuses[reply.status_code] += 1
    assert reply.status_code < 500, (request, reply.text[:500])
    if reply.status_code >= 400:
        assert is_envelope(json.loads(reply.content)), (request, reply.text[:500])


def test_the_fuzz_ran_its_count(gateway):
    """After the fuzz (same module, in order): the count was reached, and it reached the
    models (answers of 200), not only the door's refusals."""
    if not statuses:
        pytest.skip("counts only after the fuzz test itself (run the whole module)")
    print("fuzz answers by status:", dict(sorted(statuses.items())))  # docs/reliability.md
    assert sum(statuses.values()) >= EXAMPLES
    assert statuses[200] > EXAMPLES // 50 and statuses[400] > EXAMPLES // 10, statuses
