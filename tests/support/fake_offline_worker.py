"""A stand-in for backends/vllm/offline_worker.py that speaks its protocol without vLLM:
captions each image with its file's size (a video or audio file: its modality, the spooled
file's extension and size, so a test sees what reached the worker), and exits (as a crashed
engine would) after `die_after` images when the config line asks for it."""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    config = json.loads(sys.stdin.readline())
    print(json.dumps({"ready": True, "flags": config["engine_args"]}), flush=True)
    for count, line in enumerate(sys.stdin, start=1):
        if count == config.get("die_after"):
            os._exit(3)
        item = json.loads(line)
        caption = f"{os.path.getsize(item['path'])} bytes"
        if "modality" in item:
            caption = f"{item['modality']} {os.path.splitext(item['path'])[1]} {caption}"
        print(json.dumps({"id": item["id"], "caption": caption, "tokens": 2}), flush=True)


if __name__ == "__main__":
    main()
