"""`backend: transformers` against the seed's JoyCaption loop (not a pytest test; prints figures).

Three sides, the same tiny random JoyCaption-style LLaVA (`vlm-gateway tiny-model --joycaption`),
the same images, prompt, system message, greedy decoding and max tokens:
- **seed**: the seed's JoyCaption loop, in this process: per image `Image.open().convert("RGB")`
  at full size, `processor.apply_chat_template` on the system ("You are a helpful image
  captioner.") and user messages, `processor(text=[...], images=[...])`, one
  `generate(max_new_tokens=..., do_sample=False)`, the new tokens decoded;
- **caption**: `vlm-gateway caption --config` with a `backend: transformers` entry (the gateway
  built in caption's own process, images shrunk for the model in caption's pool);
- **gateway c=16**: a running `vlm-gateway serve` with the same entry, 16 client threads each
  posting one image at a time as a data URL of the whole file (what any OpenAI client sends),
  until the folder is done.

    .venv/bin/python -m tests.bench.bench_transformers_vs_seed                 # a few minutes
    .venv/bin/python -m tests.bench.bench_transformers_vs_seed --small 600 --photos 200 --rounds 3
    # --max-tokens N, --concurrency N (the gateway's clients), --device cuda, --seed-threads N

Images: (a) 224x224 and (b) 1600x1200 photo-like JPEGs generated here. torch's CPU threads: the
seed's loop uses as many as the gateway's model thread does (`cpu_threads`' default, every core
but one; `--seed-threads 0` leaves torch's own default), so the comparison is of the two ways
of working, not of OpenMP settings. Rounds alternate who goes first; each figure is the median
over rounds of images/s as each side times itself (the seed: its first `Image.open` to its last
decode; caption: its own summary line; the gateway: first request sent to last answer read);
start-up and model loading are outside the timed part on every side. Also printed: each side's
CPU ms per image (the figure least moved by other work on a shared machine).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import queue
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.bench.bench_caption_vs_seed import (
    QUESTION,
    caption,
    image_sets,
    interleave,
    table,
    work_directory,
)
from tests.bench.process_cpu import children_cpu, tree_cpu
from tests.bench.seed_script import EXTENSIONS

Figure = tuple[float, float]  # images/s, completion tokens per image


def image_names(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.lower().endswith(EXTENSIONS))


# -- the seed's loop --------------------------------------------------------------------------


class SeedLoop:
    """The seed's JoyCaption recipe (its Hugging Face model card's loop), greedy."""

    def __init__(self, model_dir: Path, device: str, system: str) -> None:
        import torch
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        self.torch = torch
        self.processor = AutoProcessor.from_pretrained(model_dir)
        dtype = torch.float32 if device == "cpu" else torch.float16
        model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=dtype)
        self.model = model.to(device).eval()
        self.device, self.dtype, self.system = device, dtype, system

    def caption(self, path: Path, max_tokens: int) -> int:
        """One image, the seed's way; returns the number of new tokens."""
        from PIL import Image

        image = Image.open(path).convert("RGB")
        convo = [
            {"role": "system", "content": self.system},
            {"role": "user", "content": QUESTION},
        ]
        text = self.processor.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)
        inputs = self.processor(text=[text], images=[image], return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        out = self.model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1] :]
        self.processor.tokenizer.decode(new, skip_special_tokens=True)
        return len(new)

    def run(self, folder: Path, max_tokens: int, cpu: dict[str, list[float]]) -> Figure:
        names = image_names(folder)
        tokens = 0
        cpu_before, started = time.process_time(), time.perf_counter()
        with self.torch.inference_mode():
            for name in names:
                tokens += self.caption(folder / name, max_tokens)
        seconds = time.perf_counter() - started
        cpu.setdefault("seed (this process)", []).append(
            (time.process_time() - cpu_before) * 1000 / len(names)
        )
        return len(names) / seconds, tokens / len(names)


# -- the gateway's sides ----------------------------------------------------------------------


def gateway_config(model_dir: Path, device: str, system: str, work: Path) -> dict[str, Any]:
    entry = {
        "name": "joycaption",
        "backend": "transformers",
        "model": str(model_dir),
        "device": device,
        "system_prompt": system,
    }
    return {
        "data_dir": str(work / "data"),
        "access_log": False,
        "log_level": "warning",
        "models": [entry],
    }


def caption_side(config_path: Path, model_dir: Path, work: Path, max_tokens: int) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    client = ["--config", str(config_path), "--model", "joycaption"]

    def run(folder: Path, cpu: dict[str, list[float]]) -> Figure:
        out = work / "caption.jsonl"
        before = children_cpu()
        rate = caption(client, folder, out, max_tokens)
        count = len(image_names(folder))
        cpu.setdefault("caption command (+ its pool)", []).append(
            (children_cpu() - before) * 1000 / count
        )
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        ids = [tokenizer(r["caption"], add_special_tokens=False).input_ids for r in lines]
        return rate, sum(map(len, ids)) / len(ids)

    return run


def post_images(port: int, folder: Path, max_tokens: int, concurrency: int) -> tuple[float, int]:
    """Every image in `folder` posted by `concurrency` clients, each one request at a time:
    (seconds from the first request to the last answer, completion tokens in all)."""
    todo: queue.SimpleQueue[Path] = queue.SimpleQueue()
    for name in image_names(folder):
        todo.put(folder / name)

    def client() -> int:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        tokens = 0
        while True:
            try:
                path = todo.get_nowait()
            except queue.Empty:
                connection.close()
                return tokens
            url = "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()
            image = {"type": "image_url", "image_url": {"url": url}}
            text = {"type": "text", "text": QUESTION}
            body = {
                "model": "joycaption",
                "max_tokens": max_tokens,
                "temperature": 0,
                "messages": [{"role": "user", "content": [image, text]}],
            }
            headers = {"content-type": "application/json"}
            connection.request("POST", "/v1/chat/completions", json.dumps(body), headers)
            response = connection.getresponse()
            answer = response.read()
            if response.status != 200:
                raise RuntimeError(f"{path.name}: HTTP {response.status} {answer[:300]!r}")
            tokens += json.loads(answer)["usage"]["completion_tokens"]

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(lambda _: client(), range(concurrency)))
    return time.perf_counter() - started, tokens


def gateway_side(port: int, pid: int, max_tokens: int, concurrency: int) -> Any:
    def run(folder: Path, cpu: dict[str, list[float]]) -> Figure:
        count = len(image_names(folder))
        server_before, client_before = sum(tree_cpu(pid).values()), time.process_time()
        seconds, tokens = post_images(port, folder, max_tokens, concurrency)
        server = (sum(tree_cpu(pid).values()) - server_before) * 1000 / count
        cpu.setdefault("gateway (serve, + its pool)", []).append(server)
        client = (time.process_time() - client_before) * 1000 / count
        cpu.setdefault(f"{concurrency} clients (this process)", []).append(client)
        return count / seconds, tokens / count

    return run


# -- the run ----------------------------------------------------------------------------------


def print_cpu(cpu: dict[str, dict[str, list[float]]]) -> None:
    print("\nCPU ms per image, mean over rounds")
    print("| images | process | CPU ms/image |\n| --- | --- | ---: |")
    for label, processes in cpu.items():
        for process, values in processes.items():
            print(f"| {label} | {process} | {statistics.mean(values):.2f} |")


def bench(args: argparse.Namespace, work: Path, sets: dict[str, Path]) -> None:
    import yaml

    from tests.support.processes import GatewayProcess
    from vlm_gateway.backends.transformers.settings import TransformersBackendSettings
    from vlm_gateway.cli.tiny_hf_models import JOYCAPTION_SYSTEM_PROMPT, build_tiny_joycaption

    model_dir = build_tiny_joycaption(work / "tiny-joycaption")
    config = gateway_config(model_dir, args.device, JOYCAPTION_SYSTEM_PROMPT, work)
    config_path = work / "caption.yaml"
    config_path.write_text(yaml.safe_dump(config))
    entry = TransformersBackendSettings.model_validate(config["models"][0])
    threads = entry.threads() if args.seed_threads is None else args.seed_threads
    if threads:
        import torch

        torch.set_num_threads(threads)
    seed = SeedLoop(model_dir, args.device, JOYCAPTION_SYSTEM_PROMPT)
    gateway = GatewayProcess(config, work).start(deadline_s=300)
    try:
        assert gateway.proc is not None
        way = {
            "seed": lambda folder, cpu: seed.run(folder, args.max_tokens, cpu),
            "caption": caption_side(config_path, model_dir, work, args.max_tokens),
            f"gateway c={args.concurrency}": gateway_side(
                gateway.port, gateway.proc.pid, args.max_tokens, args.concurrency
            ),
        }
        for run in way.values():  # first calls allocate and fill caches
            run(sets["warm"], {})
        rows, cpu = [], {}
        for label, folder in sets.items():
            if label == "warm":
                continue
            print(f"  {label}", flush=True)
            cpu[label] = {}
            sides = {
                name: (lambda r=run, f=folder, c=cpu[label]: r(f, c)) for name, run in way.items()
            }
            rows.append((label, interleave(sides, args.rounds)))
    finally:
        gateway.stop()
    print(
        f"\nmax_tokens {args.max_tokens}, greedy, {args.rounds} round(s), medians; device "
        f"{args.device}; torch threads: gateway {entry.threads()}, seed {threads or 'default'}; "
        f"load at end {os.getloadavg()}"
    )
    table("seed's JoyCaption loop vs caption and a gateway (backend: transformers)", rows)
    print("targets: caption >= 3x the seed; the gateway at 16 in flight >= 2x")
    print_cpu(cpu)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=400, help="224x224 JPEGs")
    parser.add_argument("--photos", type=int, default=200, help="1600x1200 JPEGs")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=16, help="the gateway's clients")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (both sides)")
    parser.add_argument(
        "--seed-threads", type=int, help="torch threads of the seed (default: the gateway's)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)

    with work_directory("bench-tf-vs-seed-", args.keep) as work:
        bench(args, work, image_sets(work, args.small, args.photos, (1600, 1200)))


if __name__ == "__main__":
    main()
