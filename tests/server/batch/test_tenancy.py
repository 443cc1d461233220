"""Keys as tenants for the Files and Batch APIs (issue 12): every route, tried by the owner, by
another key and by an admin key, on a real gateway through the official SDK. Another owner's
object must be answered exactly as an id that does not exist."""

from __future__ import annotations

import io
from collections.abc import Callable

import openai
import pytest

from tests.server.batch.batch_support import (
    OLD_BATCH_ID,
    OLD_FILE_ID,
    chat_line,
    jsonl,
    wait_final,
    write_old_store,
)
from tests.support.polling import wait_until
from tests.support.processes import GatewayProcess

MODELS = ("ok", "fault-400", "fault-stall", "other")
KEYS = {"alice": "sk-alice", "bob": "sk-bob", "carol": "sk-carol", "root": "sk-root"}
ALICE_MODELS = ["ok", "fault-400", "fault-stall"]  # not "other"
# Ids that exist nowhere, as long as real ones (the refusals are compared byte for byte).
MISSING_FILE = "file-ffffffffffffffffffffffff"
MISSING_BATCH = "batch_ffffffffffffffffffffffff"
ENDPOINT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def old_content(tmp_path_factory) -> tuple[bytes, object]:
    data_dir = tmp_path_factory.mktemp("tenancy") / "data"
    return write_old_store(data_dir), data_dir


@pytest.fixture(scope="module")
def gateway(upstream, old_content, tmp_path_factory):
    _, data_dir = old_content
    keys = [
        {"name": "alice", "key": KEYS["alice"], "models": ALICE_MODELS},
        {"name": "bob", "key": KEYS["bob"]},
        {"name": "carol", "key": KEYS["carol"]},
        {"name": "root", "key": KEYS["root"], "admin": True},
    ]
    config = {
        "data_dir": str(data_dir),
        "security": {"keys": keys},
        "models": [
            {
                "name": name,
                "backend": "openai",
                "base_url": upstream.base_url,
                "upstream_model": "ok" if name == "other" else name,
                "timeout": 20,
            }
            for name in MODELS
        ],
    }
    with GatewayProcess(config, tmp_path_factory.mktemp("tenancy-work")) as proc:
        yield proc


def _client(gateway, name: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEYS[name], max_retries=0)


@pytest.fixture
def alice(gateway):
    return _client(gateway, "alice")


@pytest.fixture
def bob(gateway):
    return _client(gateway, "bob")


@pytest.fixture
def carol(gateway):
    return _client(gateway, "carol")


@pytest.fixture
def root(gateway):
    return _client(gateway, "root")


def upload(client: openai.OpenAI, lines: list[dict]):
    return client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")


def create_batch(client: openai.OpenAI, file_id: str):
    return client.batches.create(input_file_id=file_id, endpoint=ENDPOINT, completion_window="24h")


def refusal(call: Callable[[str], object], object_id: str) -> tuple[int, str]:
    with pytest.raises(openai.NotFoundError) as caught:
        call(object_id)
    return caught.value.status_code, caught.value.response.text.replace(object_id, "<id>")


def assert_hidden(call: Callable[[str], object], object_id: str, missing_id: str) -> None:
    """`call` on `object_id` is refused exactly as on an id that does not exist."""
    hidden = refusal(call, object_id)
    assert hidden == refusal(call, missing_id)
    assert '"code":"not_found"' in hidden[1].replace(" ", "")


def ids(page) -> list[str]:
    return [item.id for item in page.data]


def test_files_are_seen_by_their_owner_and_admins_only(alice, bob, root):
    data = jsonl([chat_line("a", "ok")])
    mine = alice.files.create(file=("a.jsonl", io.BytesIO(data)), purpose="batch")
    theirs = upload(bob, [chat_line("b", "ok")])

    assert mine.id in ids(alice.files.list()) and theirs.id not in ids(alice.files.list())
    assert theirs.id in ids(bob.files.list()) and mine.id not in ids(bob.files.list())
    assert {mine.id, theirs.id} <= set(ids(root.files.list()))
    for call in (bob.files.retrieve, bob.files.content, bob.files.delete):
        assert_hidden(call, mine.id, MISSING_FILE)

    assert alice.files.retrieve(mine.id) == mine == root.files.retrieve(mine.id)
    assert alice.files.content(mine.id).content == data == root.files.content(mine.id).content
    assert alice.files.delete(mine.id).deleted  # bob's attempt above deleted nothing
    assert root.files.delete(theirs.id).deleted
    assert_hidden(bob.files.retrieve, theirs.id, MISSING_FILE)


def test_batches_and_their_result_files_belong_to_the_owner(alice, bob, root):
    file = upload(alice, [chat_line("good", "ok"), chat_line("bad", "fault-400")])
    assert_hidden(lambda file_id: create_batch(bob, file_id), file.id, MISSING_FILE)

    batch = wait_final(alice, create_batch(alice, file.id).id)
    assert batch.status == "completed" and batch.output_file_id and batch.error_file_id
    for call in (bob.batches.retrieve, bob.batches.cancel):
        assert_hidden(call, batch.id, MISSING_BATCH)
    assert batch.id in ids(alice.batches.list()) and batch.id in ids(root.batches.list())
    assert batch.id not in ids(bob.batches.list())
    assert root.batches.retrieve(batch.id) == alice.batches.retrieve(batch.id)

    for result_id in (batch.output_file_id, batch.error_file_id):
        for call in (bob.files.retrieve, bob.files.content, bob.files.delete):
            assert_hidden(call, result_id, MISSING_FILE)
        assert result_id in ids(alice.files.list()) and result_id not in ids(bob.files.list())
        content = alice.files.content(result_id).content
        assert content and root.files.content(result_id).content == content

    # An admin may run another's file; the batch is then the admin's own.
    admins = wait_final(root, create_batch(root, file.id).id)
    assert admins.status == "completed"
    assert_hidden(alice.batches.retrieve, admins.id, MISSING_BATCH)
    assert_hidden(alice.files.content, admins.output_file_id, MISSING_FILE)


def test_only_the_owner_or_an_admin_cancels(alice, bob, root):
    stalls = [chat_line(f"stall-{i}", "fault-stall") for i in range(2)]
    batch = create_batch(alice, upload(alice, stalls).id)
    wait_until(lambda: alice.batches.retrieve(batch.id).status == "in_progress", "running")
    assert_hidden(bob.batches.cancel, batch.id, MISSING_BATCH)
    assert alice.batches.retrieve(batch.id).status == "in_progress"
    assert alice.batches.cancel(batch.id).status == "cancelling"

    bobs = create_batch(bob, upload(bob, stalls).id)
    wait_until(lambda: bob.batches.retrieve(bobs.id).status == "in_progress", "running")
    assert root.batches.cancel(bobs.id).status == "cancelling"
    assert wait_final(alice, batch.id).status == "cancelled"
    assert wait_final(bob, bobs.id).status == "cancelled"


def test_lists_page_through_own_objects_only(carol, bob, root):
    """Pages are cut after the owner filter: full pages and a true has_more, whatever others
    stored in between. Carol is used by this test alone."""
    mine, others = [], []
    for i in range(3):
        mine.append(upload(carol, [chat_line(f"c{i}", "ok")]).id)
        others.append(upload(bob, [chat_line(f"b{i}", "ok")]).id)
    first = carol.files.list(limit=2)
    assert ids(first) == mine[::-1][:2] and first.has_more
    rest = carol.files.list(limit=2, after=first.data[-1].id)
    assert ids(rest) == mine[:1] and not rest.has_more
    # Someone else's id as the cursor finds nothing, as an unknown id does.
    assert ids(bob.files.list(after=mine[-1])) == ids(bob.files.list(after=MISSING_FILE)) == []
    assert set(mine + others) <= set(ids(root.files.list()))

    batches = []
    for file_id in mine:
        batches.append(create_batch(carol, file_id).id)
        create_batch(bob, others[0])
    first = carol.batches.list(limit=2)
    assert ids(first) == batches[::-1][:2] and first.has_more
    rest = carol.batches.list(limit=2, after=first.data[-1].id)
    assert ids(rest) == batches[:1] and not rest.has_more
    outputs = [wait_final(carol, batch_id).output_file_id for batch_id in batches]

    # The purpose filter is applied before the page is cut too (the outputs are newest).
    assert ids(carol.files.list(purpose="batch", limit=1)) == mine[-1:]
    assert set(ids(carol.files.list(purpose="batch_output"))) == set(outputs)


def test_batch_lines_may_name_only_the_owners_models(alice, bob):
    lines = [chat_line("a", "ok"), chat_line("b", "other"), chat_line("c", "no-such-model")]
    batch = wait_final(alice, create_batch(alice, upload(alice, lines).id).id)
    assert batch.status == "failed"
    errors = {e.line: e for e in batch.errors.data}
    assert sorted(errors) == [2, 3]
    assert {(e.code, e.param) for e in errors.values()} == {("model_not_found", "body.model")}
    # Refused in the same words as a model that does not exist; the list names only hers.
    as_if_unknown = errors[2].message.replace("Line 2", "Line 3").replace("'other'", "'x'")
    assert as_if_unknown == errors[3].message.replace("'no-such-model'", "'x'")
    assert "other" not in errors[2].message.split("Available:")[1]

    allowed = wait_final(bob, create_batch(bob, upload(bob, lines[:2]).id).id)
    assert allowed.status == "completed" and allowed.request_counts.completed == 2


def test_rows_from_before_owners_are_the_anonymous_owners(alice, root, old_content):
    content, _ = old_content
    for call in (alice.files.retrieve, alice.files.content, alice.files.delete):
        assert_hidden(call, OLD_FILE_ID, MISSING_FILE)
    assert_hidden(alice.batches.retrieve, OLD_BATCH_ID, MISSING_BATCH)
    assert root.files.content(OLD_FILE_ID).content == content
    assert root.batches.retrieve(OLD_BATCH_ID).status == "completed"
    assert OLD_BATCH_ID in ids(root.batches.list(limit=100))
