"""DrainingServer in-process (its drain is tested end to end in
tests/server/reliability/test_drain.py): what it does once started."""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from tests.support.polling import wait_until
from vlm_gateway.cli import draining_server
from vlm_gateway.cli.draining_server import DrainingServer
from vlm_gateway.server.drain import Drain


@contextlib.contextmanager
def started(app: FastAPI) -> Iterator[DrainingServer]:
    """`app` served on a free port in a thread until the block ends."""
    drain = Drain()
    config = uvicorn.Config(drain.wrap(app), host="127.0.0.1", port=0, log_level="warning")
    server = DrainingServer(config, app, drain, grace_s=1)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, "the server started")
        yield server
    finally:
        server.should_exit = True
        thread.join(10)
        gc.unfreeze()


def test_what_the_startup_made_is_kept_out_of_the_collectors_way():
    """Full collections no longer walk the app's long-lived objects mid-request."""
    gc.unfreeze()
    app = FastAPI()
    with started(app):
        wait_until(lambda: gc.get_freeze_count() > 0, "the startup's objects frozen")
        assert not any(app is obj for obj in gc.get_objects())  # frozen: out of every generation


def test_the_serving_process_keeps_its_large_buffers_on_the_heap(monkeypatch):
    """Set once the server has started (cli/allocator.py; here recorded, not applied, so the
    test process's allocator is left alone: tests/cli/test_allocator.py reads it back)."""
    calls: list[str] = []
    monkeypatch.setattr(draining_server, "keep_large_buffers_on_heap", lambda: calls.append("set"))
    with started(FastAPI()):
        wait_until(lambda: calls == ["set"], "the allocator setting applied")
