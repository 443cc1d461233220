"""An in-process kind loaded and unloaded on demand, in a process of its own, with the process's
resident memory (VmRSS) read at each step; one JSON line per load/unload cycle on stdout.

    python -m tests.support.inprocess_swap KIND MODEL_DIR DTYPE CYCLES

KIND is `blip2` or `transformers`; the backend is built by the kind's own builder from an entry
that says `load: on_demand`. Each cycle loads, answers one request, unloads. A process of its
own, so that nothing else (pytest, other tests' models) moves its memory while it is measured.
"""

from __future__ import annotations

import asyncio
import json
import sys
import weakref
from pathlib import Path
from typing import Any

from tests.support.images import image_message, png_data_url


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def build(kind: str, model_dir: str, dtype: str) -> Any:
    if kind == "blip2":
        from vlm_gateway.backends import blip2 as package
        from vlm_gateway.backends.blip2.settings import Blip2BackendSettings as settings
    else:
        from vlm_gateway.backends import transformers as package
        from vlm_gateway.backends.transformers.settings import (
            TransformersBackendSettings as settings,
        )
    entry = settings(
        name="swap", backend=kind, model=model_dir, device="cpu", dtype=dtype, load="on_demand"
    )
    # The in-process builders use nothing from the build context.
    [backend] = package.build(entry, None)
    return backend


async def cycles(backend: Any, count: int) -> None:
    from vlm_gateway.core.protocol import ChatCompletionRequest

    request = ChatCompletionRequest.model_validate(
        {
            "model": "swap",
            "messages": [image_message("What is in the picture?", png_data_url(seed=1))],
            "max_tokens": 8,
            "temperature": 0,
        }
    )
    await backend.start()
    report: dict[str, Any] = {
        "loadable": backend.loadable,
        "after_start": backend.status.state.value,
    }
    for cycle in range(count):
        report |= {"cycle": cycle, "before_load": rss_mib()}
        await backend.load()
        report["loaded_state"] = backend.status.state.value
        answer = await backend.chat(request)
        report |= {"answer": answer["choices"][0]["message"]["content"], "loaded": rss_mib()}
        model = weakref.ref(backend._loaded)
        await backend.unload()
        report |= {"after_unload": rss_mib(), "model_freed": model() is None}
        report["unloaded_state"] = backend.status.state.value
        print(json.dumps(report), flush=True)
    await backend.stop()


def main(kind: str, model_dir: str, dtype: str, count: str) -> None:
    asyncio.run(cycles(build(kind, model_dir, dtype), int(count)))


if __name__ == "__main__":
    main(*sys.argv[1:])
