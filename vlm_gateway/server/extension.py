"""What `serve --workers N` adds to an app: the supervisor's internal app and each worker get
their own routes and middlewares (vlm_gateway/server/workers/), and workers count rate limits
in a table they share. One process serving alone has none."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI

from vlm_gateway.server.door.limits import SharedUsage


@dataclass(frozen=True)
class AppExtension:
    # Adds routes and middlewares; called before the door's, so those run inside it.
    install: Callable[[FastAPI], None]
    shared_usage: SharedUsage | None = None
