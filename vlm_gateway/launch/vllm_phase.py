"""Where a starting `vllm serve` is, read from the tail of its log: for the progress lines a
person reads while a model loads (which can take 15 minutes on a first start).

Never used to decide readiness: that is HTTP polling (readiness.py). vLLM's wording changes
between versions, so an unknown line moves nothing: the phase is that of the last line that
is recognised, and None when no line is.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from vlm_gateway.launch.process import LAUNCH_MARKER


class VllmPhase(enum.Enum):
    STARTING = "starting"  # launched; nothing recognised yet (config, tokenizer, processes)
    DOWNLOADING = "downloading"  # hub files
    LOADING_WEIGHTS = "loading weights"
    COMPILING = "compiling"  # torch.compile, CUDA graph capture, memory profiling, warm-up
    READY = "ready"  # its API server is up (the gateway still polls /health and /v1/models)


# Checked against each line, most specific phase first; every pattern is vLLM's (or the hub's)
# own wording, matched loosely so that small rewordings still match.
_PATTERNS: tuple[tuple[VllmPhase, re.Pattern[str]], ...] = (
    (
        VllmPhase.READY,
        re.compile(
            r"Application startup complete|Starting vLLM (?:API )?server (?:\d+ )?on|"
            r"Uvicorn running on"
        ),
    ),
    (
        VllmPhase.COMPILING,
        re.compile(
            r"torch\.compile (?:takes|and initial)|for vLLM's torch\.compile|"
            r"Dynamo bytecode transform|"
            r"Compiling a graph for|Directly load the compiled graph|"
            r"Capturing CUDA graph|Graph capturing finished|Memory profiling takes|"
            r"Available KV cache memory|KV cache size:|init engine \(profile"
        ),
    ),
    (
        VllmPhase.LOADING_WEIGHTS,
        re.compile(
            r"Starting to load model|Loading (?:safetensors|pt) checkpoint shards|"
            r"Loading (?:model )?weights took|Model loading took"
        ),
    ),
    (
        VllmPhase.DOWNLOADING,
        re.compile(
            # huggingface_hub's progress bars: "model-00001-of-00002.safetensors:  37%|..."
            r"^\s*\S+\.(?:safetensors|bin|pt|pth|gguf|json|model|txt|jinja|tiktoken)\s*:\s*\d+%|"
            r"Fetching \d+ files|Time spent downloading weights|Downloading\b"
        ),
    ),
)

# "(Worker pid=24499) INFO 12-01 01:57:56 [default_loader.py:501] " and uvicorn's "INFO:     ".
_LINE_PREFIX = re.compile(
    r"^(?:\([^)]*\)\s+)?(?:(?:DEBUG|INFO|WARNING|ERROR)\s+[\d-]+\s+[\d:.]+\s+\[[^\]]*\]\s+)?"
    r"(?:(?:INFO|WARNING):\s+)?"
)
_EVIDENCE_CHARS = 120


@dataclass(frozen=True)
class PhaseReading:
    phase: VllmPhase
    line: str  # the line it was read from, without vLLM's prefix, shortened


def read_phase(log_text: str) -> PhaseReading | None:
    """The phase of the last launch in `log_text` (the end of a vLLM log file), from its last
    recognised line; None when no line of that launch is recognised."""
    launch = log_text.rsplit(LAUNCH_MARKER, 1)[-1]
    for line in reversed(launch.splitlines()):  # tqdm's "\r" updates split too
        for phase, pattern in _PATTERNS:
            if pattern.search(line):
                return PhaseReading(phase, _evidence(line))
    return None


def _evidence(line: str) -> str:
    text = _LINE_PREFIX.sub("", line.strip(), count=1)
    if len(text) > _EVIDENCE_CHARS:
        text = text[: _EVIDENCE_CHARS - 3] + "..."
    return text
