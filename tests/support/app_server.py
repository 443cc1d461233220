"""A gateway app built in this process (e.g. with a backend kind that exists only in a test)
served by a real uvicorn server on a free loopback port, in a thread, with the drain the
`serve` command wraps it in."""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from tests.support.polling import wait_until
from vlm_gateway.cli.draining_server import DrainingServer
from vlm_gateway.server.drain import Drain


class ServedApp:
    def __init__(self, app: FastAPI, server: DrainingServer) -> None:
        self.app = app
        self.server = server

    @property
    def url(self) -> str:
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def served(app: FastAPI, grace_s: float = 5.0) -> Iterator[ServedApp]:
    """`app` served until the block ends, then drained and stopped (its lifespan too)."""
    drain = Drain()
    config = uvicorn.Config(drain.wrap(app), host="127.0.0.1", port=0, log_level="warning")
    server = DrainingServer(config, app, drain, grace_s=grace_s)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), "the server started")
        assert server.started, "the app did not start"
        yield ServedApp(app, server)
    finally:
        server.should_exit = True
        thread.join(30)
        gc.unfreeze()  # DrainingServer froze what the startup made
