"""One worker process of `serve --workers N`, started by the supervisor (cli/supervisor.py):
the public API on the listening socket it inherits, with the models the supervisor runs
reached through the supervisor's backplane. Not a command of its own."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SPEC_ENV = "VLM_GATEWAY_WORKER_SPEC"
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerSpec:
    """What the supervisor hands a worker (as JSON in its environment): how to load the same
    settings, its socket and place, and where the backplane is."""

    config: str | None
    overrides: dict[str, Any]
    socket_fd: int
    index: int
    runtime_dir: str
    backplane_url: str
    token: str

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_env() -> WorkerSpec:
        return WorkerSpec(**json.loads(os.environ.pop(SPEC_ENV)))


def run_worker(spec: WorkerSpec) -> None:
    from vlm_gateway.backends.kinds import settings_model
    from vlm_gateway.cli.draining_server import serve_draining
    from vlm_gateway.config.loading import load_settings
    from vlm_gateway.server.app import create_app
    from vlm_gateway.server.door.shared_limits import SharedUsageTable, table_path
    from vlm_gateway.server.http_protocol import head_deadline_protocol
    from vlm_gateway.server.logging_setup import configure_logging
    from vlm_gateway.server.workers.plan import BackplaneLink, worker_settings
    from vlm_gateway.server.workers.worker_app import worker_extension

    _exit_with_parent()
    config = Path(spec.config) if spec.config else None
    settings = load_settings(settings_model(), config, spec.overrides)
    link = BackplaneLink(spec.backplane_url, spec.token)
    data_dir = Path(spec.runtime_dir) / f"worker-{spec.index}"
    settings = worker_settings(settings, link, str(data_dir))
    usage = SharedUsageTable(table_path(spec.runtime_dir), spec.index)
    usage.forget_own_requests()  # what a killed predecessor had in flight died with it
    configure_logging(settings)
    app = create_app(settings, extension=worker_extension(link, usage))
    # The same drain as one process serving alone (cli/draining_server.py): the supervisor
    # sends SIGTERM after closing its copy of the socket, and kills it at a second signal.
    serve_draining(
        app,
        settings.shutdown_grace,
        sockets=[socket.socket(fileno=spec.socket_fd)],
        stop_on_second_signal=False,  # Ctrl-C, then the supervisor's SIGTERM: one drain
        log_level=settings.log_level,
        log_config=None,
        access_log=False,
        http=head_deadline_protocol(settings.header_timeout),  # slowloris: heads on a clock
    )


def _exit_with_parent() -> None:
    """SIGTERM when the supervisor dies, however it dies (Linux), so no worker outlives it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the supervisor was already gone
        os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    run_worker(WorkerSpec.from_env())
