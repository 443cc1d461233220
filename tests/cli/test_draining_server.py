"""DrainingServer in-process (its drain is tested end to end in
tests/server/reliability/test_drain.py): what it does once started."""

from __future__ import annotations

import gc
import threading

import uvicorn
from fastapi import FastAPI

from tests.support.polling import wait_until
from vlm_gateway.cli.draining_server import DrainingServer
from vlm_gateway.server.drain import Drain


def test_what_the_startup_made_is_kept_out_of_the_collectors_way():
    """Full collections no longer walk the app's long-lived objects mid-request."""
    gc.unfreeze()
    app = FastAPI()
    drain = Drain()
    config = uvicorn.Config(drain.wrap(app), host="127.0.0.1", port=0, log_level="warning")
    server = DrainingServer(config, app, drain, grace_s=1)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, "the server started")
        wait_until(lambda: gc.get_freeze_count() > 0, "the startup's objects frozen")
        assert not any(app is obj for obj in gc.get_objects())  # frozen: out of every generation
    finally:
        server.should_exit = True
        thread.join(10)
        gc.unfreeze()
