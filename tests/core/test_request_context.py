"""The current request as a context variable: which ids are taken as given, and where the
binding is seen (inside the block and tasks started there; not after, not elsewhere)."""

from __future__ import annotations

import asyncio

import pytest

from vlm_gateway.core.request_context import (
    RequestContext,
    accepted_request_id,
    bound_request,
    current_request_id,
    new_request_id,
    note_model,
)


@pytest.mark.parametrize(
    "given",
    [
        "req_0123abcd",
        "9b2c4e1a-7f3d-4c55-8a0e-2f6b9d1c3e4f",
        "batch_abc-line:7",
        "dGVzdA+/=",
        "x" * 128,
    ],
)
def test_usable_ids_are_taken_as_given(given):
    assert accepted_request_id(given) == given


@pytest.mark.parametrize(
    "given", [None, "", "x" * 129, "two words", "new\nline", 'quo"te', "semi;colon", "caf\u00e9"]
)
def test_unusable_ids_are_refused(given):
    assert accepted_request_id(given) is None


def test_new_ids_are_usable_and_distinct():
    made = {new_request_id() for _ in range(100)}
    assert len(made) == 100 and all(accepted_request_id(i) == i for i in made)


def test_a_binding_is_seen_inside_and_by_tasks_started_there_only():
    async def read_id() -> str | None:
        return current_request_id()

    async def scenario() -> tuple[str | None, str | None, str | None]:
        with bound_request(RequestContext("outer")) as context:
            seen_by_task = await asyncio.create_task(read_id())
            note_model("m")
            inside = current_request_id()
        assert context.model == "m"
        return inside, seen_by_task, current_request_id()

    assert asyncio.run(scenario()) == ("outer", "outer", None)
    note_model("ignored")  # no request bound: nothing to note, and no error
    assert current_request_id() is None
