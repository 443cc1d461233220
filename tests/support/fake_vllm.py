"""A stand-in for the `vllm` executable, for fast tests of process supervision (no model).

    python -m tests.support.fake_vllm serve MODEL --served-model-name N --port P [...]

Like `vllm serve` it spawns a child (EngineCore) in its own process group, answers /health,
/v1/models (with max_model_len), 1-token chats and a small /metrics in vLLM's names (its
request counter counts the chats served). Faults, set by environment variables:
  FAKE_VLLM_KV_LIMIT=N   refuse --max-model-len above N the way vLLM does, and exit 1
  FAKE_VLLM_WEDGE_FILE=F while file F exists, chat requests hang (a wedged engine)
  FAKE_VLLM_EXIT=CODE    exit at once with CODE, after a line on stderr
  FAKE_VLLM_STARTUP_STEPS=DIR  print a realistic vLLM start-up log (STARTUP_STEPS) before
                         serving; step k > 0 waits until file DIR/k exists, so a test sees
                         each phase for as long as it needs to
  FAKE_VLLM_STARTUP_FAIL=1     with the above: a CUDA out-of-memory traceback and exit 1
                         instead of the last step
  FAKE_VLLM_REQUEST_LOG=F      append "METHOD PATH" of every request it gets to file F
Sleep mode as vLLM 0.32 has it: with --enable-sleep-mode and VLLM_SERVER_DEV_MODE=1 both (else
404, as vLLM without them), POST /sleep?level=N, POST /wake_up and GET /is_sleeping answer in
vLLM's shapes, and chats are refused with 503 while it sleeps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("model")
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--enable-sleep-mode", action="store_true")
    options, _ = parser.parse_known_args(argv)
    return options


def _handler(options: argparse.Namespace) -> type[BaseHTTPRequestHandler]:
    card = {
        "id": options.served_model_name,
        "object": "model",
        "created": 0,
        "owned_by": "vllm",
        "max_model_len": options.max_model_len,
    }

    served = {"chats": 0}
    lock = threading.Lock()
    sleep = _SleepMode(options.enable_sleep_mode and os.environ.get("VLLM_SERVER_DEV_MODE") == "1")
    request_log = os.environ.get("FAKE_VLLM_REQUEST_LOG")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def parse_request(self) -> bool:
            parsed = super().parse_request()
            if parsed and request_log:
                with lock, open(request_log, "a") as log:
                    log.write(f"{self.command} {self.path}\n")
            return parsed

        def _send(self, payload: dict) -> None:
            self._send_bytes(json.dumps(payload).encode(), "application/json")

        def _send_bytes(self, body: bytes, content_type: str) -> None:
            self.send_response(200)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _send_status(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if sleep.answers(self.path):
                return self._send_status(*sleep.answer("GET", self.path))
            if self.path == "/health":
                return self._send({})
            if self.path == "/metrics":
                text = _metrics_text(options.served_model_name, served["chats"])
                return self._send_bytes(text.encode(), "text/plain; version=0.0.4")
            return self._send({"object": "list", "data": [card]})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            if sleep.answers(self.path):
                return self._send_status(*sleep.answer("POST", self.path))
            if sleep.sleeping:
                return self._send_status(503, {"error": {"message": "the model is sleeping"}})
            wedge = os.environ.get("FAKE_VLLM_WEDGE_FILE")
            while wedge and os.path.exists(wedge):
                time.sleep(0.05)
            with lock:
                served["chats"] += 1
            self._send(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": 0,
                    "model": card["id"],
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "length",
                            "message": {"role": "assistant", "content": "a"},
                        }
                    ],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
                }
            )

    return Handler


class _SleepMode:
    """vLLM's development sleep routes (vllm/entrypoints/serve/dev/sleep/api_router.py)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.sleeping = False

    def answers(self, path: str) -> bool:
        return path.split("?")[0] in ("/sleep", "/wake_up", "/is_sleeping")

    def answer(self, method: str, path: str) -> tuple[int, dict]:
        route, _, query = path.partition("?")
        if not self.enabled:
            return 404, {"detail": "Not Found"}
        if (method, route) == ("GET", "/is_sleeping"):
            return 200, {"is_sleeping": self.sleeping}
        if (method, route) == ("POST", "/sleep"):
            self.sleeping = True
            level = dict(part.split("=", 1) for part in query.split("&") if "=" in part)
            return 200, {"status": "sleeping", "level": int(level.get("level", 1))}
        if (method, route) == ("POST", "/wake_up"):
            self.sleeping = False
            return 200, {"status": "awake", "tags": None}
        return 405, {"detail": "Method Not Allowed"}


# What `vllm serve` prints while it starts (vLLM 0.11 on a GPU, a first start from the hub),
# step by step: (the phase the gateway should read, lines).
_PREFIX_API = "(APIServer pid={pid}) INFO {time} "
_PREFIX_ENGINE = "(EngineCore_DP0 pid={pid}) INFO {time} "
STARTUP_STEPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "starting",
        (
            _PREFIX_API + "[api_server.py:1839] vLLM API server version 0.11.0",
            _PREFIX_API + "[utils.py:233] non-default args: {{'model_tag': '{model}', "
            "'port': {port}, 'model': '{model}', 'served_model_name': ['{name}']}}",
        ),
    ),
    (
        "downloading",
        (
            "config.json: 100%|\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588| "
            "4.47k/4.47k [00:00<00:00, 31.2MB/s]",
            _PREFIX_API + "[model.py:547] Resolved architecture: LlavaForConditionalGeneration",
            "tokenizer.json:  41%|\u2588\u2588\u2588\u2588      | 2.88M/7.03M "
            "[00:01<00:01, 2.6MB/s]",
        ),
    ),
    (
        "loading weights",
        (
            _PREFIX_ENGINE + "[core.py:77] Initializing a V1 LLM engine (v0.11.0) with config: "
            "model='{model}', dtype=torch.bfloat16, max_seq_len=4096",
            _PREFIX_ENGINE + "[gpu_model_runner.py:2602] Starting to load model {model}...",
            _PREFIX_ENGINE + "[weight_utils.py:392] Time spent downloading weights for {model}: "
            "61.204511 seconds",
            "Loading safetensors checkpoint shards:  50% Completed | 2/4 [00:01<00:01,  1.31it/s]",
        ),
    ),
    (
        "compiling",
        (
            _PREFIX_ENGINE + "[default_loader.py:267] Loading weights took 3.05 seconds",
            _PREFIX_ENGINE + "[gpu_model_runner.py:2653] Model loading took 14.1021 GiB and "
            "65.318 seconds",
            _PREFIX_ENGINE + "[backends.py:548] Using cache directory: /root/.cache/vllm/"
            "torch_compile_cache/5d1c0f0b5a/rank_0_0/backbone for vLLM's torch.compile",
            _PREFIX_ENGINE + "[backends.py:559] Dynamo bytecode transform time: 7.94 s",
            _PREFIX_ENGINE + "[backends.py:218] Compiling a graph for dynamic shape takes 24.11 s",
            "Capturing CUDA graphs (mixed prefill-decode, PIECEWISE):  40%|\u2588\u2588\u2588\u2588"
            "      | 27/67 [00:03<00:04,  8.62it/s]",
        ),
    ),
    (
        "ready",
        (
            _PREFIX_ENGINE + "[gpu_model_runner.py:3480] Graph capturing finished in 9 secs, "
            "took 0.53 GiB",
            _PREFIX_ENGINE + "[core.py:210] init engine (profile, create kv cache, warmup model) "
            "took 47.12 seconds",
            _PREFIX_API
            + "[api_server.py:1634] Starting vLLM API server 0 on http://127.0.0.1:{port}",
            "INFO:     Started server process [{pid}]",
            "INFO:     Application startup complete.",
        ),
    ),
)

_OUT_OF_MEMORY = (
    "(EngineCore_DP0 pid={pid}) ERROR {time} [core.py:708] EngineCore failed to start.",
    "Traceback (most recent call last):",
    '  File "vllm/v1/engine/core.py", line 699, in run_engine_core',
    "    engine_core = EngineCoreProc(*args, **kwargs)",
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
    "capacity of 79.19 GiB of which 1.02 GiB is free.",
    "RuntimeError: Engine core initialization failed. See root cause above. "
    "Failed core proc(s): {{}}",
)


def _print_startup(options: argparse.Namespace) -> bool:
    """Print STARTUP_STEPS, each after its go file; False after a start that fails."""
    gate = os.environ["FAKE_VLLM_STARTUP_STEPS"]
    fail = os.environ.get("FAKE_VLLM_STARTUP_FAIL") == "1"
    for step, (_, lines) in enumerate(STARTUP_STEPS):
        while step and not os.path.exists(os.path.join(gate, str(step))):
            time.sleep(0.02)
        if fail and step == len(STARTUP_STEPS) - 1:
            lines = _OUT_OF_MEMORY
        values = {
            "pid": os.getpid(),
            "time": time.strftime("%m-%d %H:%M:%S"),
            "model": options.model,
            "name": options.served_model_name,
            "port": options.port,
        }
        for line in lines:
            print(line.format(**values), flush=True)
    return not fail


def _metrics_text(model: str, chats: int) -> str:
    """A few series the way vLLM writes them (prometheus_client, `vllm:` names, its own
    labels), plus a process series vLLM's registry also carries."""
    labels = f'engine="0",model_name="{model}"'
    return (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        f"vllm:num_requests_running{{{labels}}} 0.0\n"
        "# HELP vllm:request_success_total Count of successfully processed requests.\n"
        "# TYPE vllm:request_success_total counter\n"
        f'vllm:request_success_total{{{labels},finished_reason="length"}} {chats}.0\n'
        "# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.\n"
        "# TYPE vllm:time_to_first_token_seconds histogram\n"
        f'vllm:time_to_first_token_seconds_bucket{{{labels},le="0.1"}} {chats}.0\n'
        f'vllm:time_to_first_token_seconds_bucket{{{labels},le="+Inf"}} {chats}.0\n'
        f"vllm:time_to_first_token_seconds_count{{{labels}}} {chats}.0\n"
        f"vllm:time_to_first_token_seconds_sum{{{labels}}} {chats * 0.01}\n"
        "# HELP process_open_fds Number of open file descriptors.\n"
        "# TYPE process_open_fds gauge\n"
        "process_open_fds 12.0\n"
    )


def main(argv: list[str]) -> int:
    options = _options(argv)
    print(f"fake vllm serving {options.model} as {options.served_model_name}", flush=True)
    if "FAKE_VLLM_EXIT" in os.environ:
        print(f"FileNotFoundError: no model at {options.model}", file=sys.stderr, flush=True)
        return int(os.environ["FAKE_VLLM_EXIT"])
    limit = int(os.environ.get("FAKE_VLLM_KV_LIMIT", "0"))
    if limit and options.max_model_len > limit:
        print(
            f"ValueError: To serve at least one request with the model's max seq len "
            f"({options.max_model_len}), more KV cache memory is needed. Based on the available "
            f"memory, the estimated maximum model length is {limit}. Try increasing "
            "`gpu_memory_utilization` or decreasing `max_model_len`.",
            flush=True,
        )
        return 1
    if "FAKE_VLLM_STARTUP_STEPS" in os.environ and not _print_startup(options):
        return 1
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])  # "EngineCore"
    ThreadingHTTPServer((options.host, options.port), _handler(options)).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
