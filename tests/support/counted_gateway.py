"""The gateway exactly as `vlm-gateway serve` runs it, in its own process, that also writes how
many asyncio tasks its event loop holds to a file every 0.1 s (for leak checks: chaos tests and
tests/bench/soak.py). Open file descriptors, RSS and threads are read from /proc/<pid>.

    with CountedGateway(config, workdir) as gateway:
        gateway.tasks(), gateway.fds(), gateway.rss_bytes(), gateway.threads()

Run as `python -m tests.support.counted_gateway COUNT_FILE serve --config ... --port ...`.
With VLMGW_TEST_CENSUS=FILE set, it also appends a census of live objects by type to FILE once
a minute (the first at start).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.support.processes import GatewayProcess

_EVERY_S = 0.1
_CENSUS_EVERY = 600  # ticks of _EVERY_S: one census a minute, only with VLMGW_TEST_CENSUS set


class CountedGateway(GatewayProcess):
    def __init__(self, config: dict, workdir: Path, env: dict | None = None) -> None:
        super().__init__(config, workdir, env)
        self.count_path = workdir / f"gateway-{self.port}.tasks"

    def program(self) -> list[str]:
        return ["-m", "tests.support.counted_gateway", str(self.count_path)]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def tasks(self) -> int:
        """asyncio tasks on the gateway's loop (its own counter not counted), at most 0.1 s old."""
        return int(json.loads(self.count_path.read_text())["tasks"])

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def rss_bytes(self) -> int:
        fields = Path(f"/proc/{self.pid}/statm").read_text().split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")


def _counting(app: Any, path: Path) -> Any:
    """`app`, plus a task started with its lifespan that writes the loop's task count."""
    started: list[asyncio.Task[None]] = []

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan" and not started:
            started.append(asyncio.create_task(_count_tasks(path), name="test-task-counter"))
        await app(scope, receive, send)

    # Attributes the serving code reads off the app (state, routes) stay reachable.
    return _Proxy(wrapped, app)


class _Proxy:
    def __init__(self, call: Any, app: Any) -> None:
        self._call, self._app = call, app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._call(scope, receive, send)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._app, name)


async def _count_tasks(path: Path) -> None:
    scratch = path.with_suffix(".tmp")
    census = os.environ.get("VLMGW_TEST_CENSUS")
    ticks = 0
    while True:
        scratch.write_text(json.dumps({"tasks": len(asyncio.all_tasks()) - 1}))
        os.replace(scratch, path)
        if census and ticks % _CENSUS_EVERY == 0:
            _write_census(Path(census))
        ticks += 1
        await asyncio.sleep(_EVERY_S)


def _write_census(path: Path) -> None:
    """Appends one line: live objects by type and the allocator's blocks, so that a soak can
    tell objects that pile up (a leak) from memory the allocator keeps (RSS creep without one).
    Walking every object takes tens of ms of the loop's time, hence once a minute at most."""
    types = Counter(type(obj).__name__ for obj in gc.get_objects())
    line = {
        "t": round(time.monotonic()),
        "blocks": sys.getallocatedblocks(),
        "objects": sum(types.values()),
        "malloc": _malloc_info(),
        "types": dict(types.most_common(40)),
    }
    with path.open("a") as out:
        out.write(json.dumps(line) + "\n")


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _malloc_info() -> dict[str, int]:
    """glibc's heap over all its arenas, in KiB: taken from the system (`arena`, plus `mmap`),
    in use, and free but kept. Python objects over 512 bytes (and C libraries) live here."""
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):  # not glibc, or older than 2.33
        return {}
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    kib = {"arena": info.arena, "mmap": info.hblkhd, "used": info.uordblks, "free": info.fordblks}
    return {key: value // 1024 for key, value in kib.items()}


def _main(count_path: Path, cli_args: list[str]) -> None:
    import vlm_gateway.server.app as app_module
    from vlm_gateway.cli.main import cli

    create_app = app_module.create_app

    def counted_create_app(*args: Any, **kwargs: Any) -> Any:
        return _counting(create_app(*args, **kwargs), count_path)

    app_module.create_app = counted_create_app  # type: ignore[assignment]
    cli(cli_args)


if __name__ == "__main__":
    _main(Path(sys.argv[1]), sys.argv[2:])
