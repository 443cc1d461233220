"""A stand-in for the `vllm` executable, for fast tests of process supervision (no model).

    python -m tests.support.fake_vllm serve MODEL --served-model-name N --port P [...]

Like `vllm serve` it spawns a child (EngineCore) in its own process group, answers /health,
/v1/models (with max_model_len) and 1-token chats. Faults, set by environment variables:
  FAKE_VLLM_KV_LIMIT=N   refuse --max-model-len above N the way vLLM does, and exit 1
  FAKE_VLLM_WEDGE_FILE=F while file F exists, chat requests hang (a wedged engine)
  FAKE_VLLM_EXIT=CODE    exit at once with CODE, after a line on stderr
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
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

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _send(self, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/health":
                return self._send({})
            return self._send({"object": "list", "data": [card]})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            wedge = os.environ.get("FAKE_VLLM_WEDGE_FILE")
            while wedge and os.path.exists(wedge):
                time.sleep(0.05)
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
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])  # "EngineCore"
    ThreadingHTTPServer((options.host, options.port), _handler(options)).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
