"""The failover decision (backends/failover_rule.py): which failures of a request's attempts
let it be tried on another replica, per model, with the poison-request guard."""

from __future__ import annotations

import pytest

from vlm_gateway.backends.failover_rule import POISON_AFTER, FailoverRule
from vlm_gateway.backends.openai_upstream.backend import upstream_status_failure
from vlm_gateway.backends.registry import BackendRegistry
from vlm_gateway.core.errors import GatewayError, UpstreamError, UpstreamTimeoutError


def answered(status: int) -> GatewayError:
    """The error the `openai` backend raises for an upstream answer of `status`."""
    return upstream_status_failure(status, b'{"error": {"message": "no"}}', {})


def unreachable() -> GatewayError:
    error = UpstreamError("refused")
    error.retryable = True  # as the backend marks a failure before the answer's head
    return error


DEFAULT = FailoverRule()


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_by_default_every_server_error_answer_fails_over_once(status):
    assert DEFAULT.fails_over("m", [answered(status)])


@pytest.mark.parametrize("status", [400, 404, 422, 429, 501, 505])
def test_other_answers_do_not(status):
    assert not DEFAULT.fails_over("m", [answered(status)])


def test_failures_before_any_answer_go_by_the_backends_mark():
    assert DEFAULT.fails_over("m", [unreachable()])
    timed_out = UpstreamTimeoutError("no head in time")
    timed_out.retryable = True
    assert DEFAULT.fails_over("m", [timed_out])
    # After the head (a body cut short, bad JSON) the backend does not mark it.
    assert not DEFAULT.fails_over("m", [UpstreamError("cut short")])


def test_the_models_own_list_decides_per_model():
    rule = FailoverRule(lambda model: [502, 503, 504] if model == "strict" else [500])
    assert not rule.fails_over("strict", [answered(500)])
    assert rule.fails_over("strict", [answered(503)])
    assert rule.fails_over("other", [answered(500)])
    assert not rule.fails_over("other", [answered(503)])
    assert rule.fails_over("strict", [unreachable()])  # not a status: not the list's to say


def test_a_request_that_got_a_500_from_two_replicas_goes_no_further():
    assert POISON_AFTER == 2
    assert not DEFAULT.fails_over("m", [answered(500), answered(500)])
    assert not DEFAULT.fails_over("m", [answered(500), unreachable(), answered(500)])
    # One 500 among other failures does not make the request suspect yet.
    assert DEFAULT.fails_over("m", [answered(503), answered(500)])
    assert DEFAULT.fails_over("m", [answered(500), answered(503)])
    assert DEFAULT.fails_over("m", [answered(500), unreachable()])


def test_a_registry_built_without_settings_has_the_default_rule():
    assert BackendRegistry([]).failover_rule.fails_over("m", [answered(500)])
    strict = BackendRegistry([], failover_on=lambda _model: [503])
    assert not strict.failover_rule.fails_over("m", [answered(500)])
