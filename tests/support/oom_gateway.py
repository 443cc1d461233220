"""The gateway exactly as `vlm-gateway serve` runs it, in its own process, whose in-process
models (transformers, BLIP-2) run out of device memory when the test says so: no real memory
pressure, a gate the test holds.

    with OomGateway(config, workdir) as gateway:
        gateway.arm()                 # the next batch to start is held, then fails
        ... send requests ...
        size = gateway.wait_held()    # that batch's rows, held in the model thread
        ... act while it is held ...
        gateway.release()             # it raises torch.OutOfMemoryError, as CUDA's allocator does
        gateway.batch_sizes()         # every batch that started, in order, failed ones included

The gate is files in a directory both processes see: `armed` (the test), renamed to `held` by
the batch that takes it (with its size), `release` (the test) lets it go.
Run as `python -m tests.support.oom_gateway GATE_DIR serve --config ... --port ...`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.polling import wait_until
from tests.support.processes import GatewayProcess

# What the gated batch raises: CUDA's message, so the gateway sees what it would on a GPU.
OOM_MESSAGE = "CUDA out of memory. Tried to allocate 20.00 GiB (raised by the test's gate)"


class OomGateway(GatewayProcess):
    def __init__(self, config: dict, workdir: Path, env: dict | None = None) -> None:
        super().__init__(config, workdir, env)
        self.gate = workdir / f"gateway-{self.port}.oom"
        self.gate.mkdir()

    def program(self) -> list[str]:
        return ["-m", "tests.support.oom_gateway", str(self.gate)]

    def arm(self) -> None:
        (self.gate / "armed").touch()

    def wait_held(self) -> int:
        """The held batch's size, once a batch took the gate."""
        held = self.gate / "held"
        return int(wait_until(lambda: held.exists() and held.read_text(), "a batch held"))

    def release(self) -> None:
        (self.gate / "release").touch()

    def batch_sizes(self) -> list[int]:
        sizes = self.gate / "sizes"
        return [int(line) for line in sizes.read_text().split()] if sizes.exists() else []


def _gated(generate: Callable[..., Any], gate: Path) -> Callable[..., Any]:
    """`generate` (a kind's `generate_batch`), except that a batch that finds the gate armed
    waits in the model thread until released, then runs out of memory."""
    import torch

    def generate_batch(loaded: Any, specs: list[Any], should_stop: threading.Event) -> Any:
        with (gate / "sizes").open("a") as sizes:
            sizes.write(f"{len(specs)}\n")
        try:
            os.rename(gate / "armed", gate / "held.tmp")
        except FileNotFoundError:
            return generate(loaded, specs, should_stop)
        (gate / "held.tmp").write_text(str(len(specs)))
        os.rename(gate / "held.tmp", gate / "held")
        while not (gate / "release").exists() and not should_stop.is_set():
            time.sleep(0.01)
        (gate / "release").unlink(missing_ok=True)
        (gate / "held").unlink()
        raise torch.OutOfMemoryError(OOM_MESSAGE)

    return generate_batch


def _main(gate: Path, cli_args: list[str]) -> None:
    from vlm_gateway.backends.blip2 import generate as blip2_generate
    from vlm_gateway.backends.transformers import generate as transformers_generate
    from vlm_gateway.cli.main import cli

    # The kinds take `generate_batch` from these modules when their model has loaded.
    for module in (blip2_generate, transformers_generate):
        module.generate_batch = _gated(module.generate_batch, gate)  # type: ignore[assignment]
    cli(cli_args)


if __name__ == "__main__":
    _main(Path(sys.argv[1]), sys.argv[2:])
