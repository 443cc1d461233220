"""`vlm-gateway caption` against the seed's batch script (not a pytest test; prints figures).

Table 1, vLLM: the seed's way (vLLM offline `LLM.generate`, batches of 16, every image opened
with Pillow at full size, run by `.venv-vllm/bin/python`) against `vlm-gateway caption --url`
to a `vlm-gateway serve` whose model is a managed `vllm serve` (`backend: vllm`, the row
"gateway"), and against `vlm-gateway caption --config --engine offline` with the same entry
(the row "offline": vLLM's offline engine run by caption itself; its engine starts for each run,
outside the timed part).
Table 2, in-process BLIP-2: the seed's Hugging Face loop (one `generate()` per image, full-size
Pillow decode) against `vlm-gateway caption --config` with a `backend: blip2` model.

    .venv/bin/python -m tests.bench.bench_caption_vs_seed                     # a few minutes
    .venv/bin/python -m tests.bench.bench_caption_vs_seed --small 600 --photos 200 --rounds 3
    .venv/bin/python -m tests.bench.bench_caption_vs_seed --skip-hf --max-num-seqs 32

Both sides: the tiny random BLIP-2 (`vlm-gateway tiny-model`), the same images (a) 224x224 and
(b) 2400x1600 photo-like JPEGs generated here, the prompt "Question: <q> Answer:" (what vLLM's
fallback template and the BLIP-2 backend build), greedy, the same max_tokens, the same vLLM
engine arguments (float32, eager, 64 MiB KV cache, max-model-len 512, vLLM's own max-num-seqs
unless --max-num-seqs, and the multimodal processor cache off on both: every image of a real
run is new, and rounds reuse the images). The caption client cannot ask for `ignore_eos`, so
neither side does: mean completion tokens are printed for each side (the gateway row: exact,
from vLLM's counters; the offline and in-process BLIP-2 rows: the captions re-tokenized) and
tokens/s. The CPU table's offline row includes that engine's start (it is caption's child).
Engines start once; rounds alternate the order (seed first, then caption first, ...). Each
figure is the median over rounds of images/s, as each side times itself: the seed's loop from
its first `Image.open` to its last `generate`, caption from its own summary line (start-up
excluded on both sides).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.bench.seed_script import EXTENSIONS, SeedOffline

QUESTION = "What is in the picture?"
_SUMMARY = re.compile(r"(\d+) captioned, (\d+) errors, .* in ([\d.]+) s")


# -- the gateway side ------------------------------------------------------------------------


def vllm_counters(port: int) -> tuple[float, float]:
    """(generation tokens, finished requests) from a vLLM's own /metrics."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    totals = {"vllm:generation_tokens_total": 0.0, "vllm:request_success_total": 0.0}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return totals["vllm:generation_tokens_total"], totals["vllm:request_success_total"]


def caption(args: list[str], folder: Path, out: Path, max_tokens: int) -> float:
    """images/s of one `vlm-gateway caption` run, from its own summary line."""
    from tests.support.processes import REPO

    out.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "vlm_gateway", "caption", str(folder), "--out", str(out)]
    argv += ["--max-tokens", str(max_tokens), "--prompt", QUESTION, *args]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    match = _SUMMARY.search(result.stderr)
    if result.returncode != 0 or match is None or match[2] != "0":
        raise RuntimeError(f"caption failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return int(match[1]) / float(match[3])


# -- images ----------------------------------------------------------------------------------


def _write_image(job: tuple[str, int, int, int]) -> None:
    from tests.bench.bench_prepare import photo_like

    path, width, height, seed = job
    Path(path).write_bytes(photo_like(width, height, seed))


def make_images(folder: Path, count: int, width: int, height: int, seed0: int) -> Path:
    from concurrent.futures import ProcessPoolExecutor

    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(folder / f"{i:06d}.jpg"), width, height, seed0 + i) for i in range(count)]
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(_write_image, jobs, chunksize=8))
    return folder


@contextlib.contextmanager
def work_directory(prefix: str, keep: bool) -> Iterator[Path]:
    """A scratch directory for one run, removed afterwards unless `keep`."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        if keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def image_sets(work: Path, small: int, photos: int, photo: tuple[int, int]) -> dict[str, Path]:
    """The folders a run captions: a warm-up set, `small` 224x224 JPEGs and `photos`
    photo-like JPEGs of `photo` (width, height), by label."""
    started = time.monotonic()
    width, height = photo
    sets = {
        "warm": make_images(work / "warm", 32, 224, 224, 10_000_000),
        f"{small} x 224x224 JPEG": make_images(work / "small", small, 224, 224, 0),
        f"{photos} x {width}x{height} photo-like JPEG": make_images(
            work / "photos", photos, width, height, 1_000_000
        ),
    }
    print(f"images generated in {time.monotonic() - started:.1f} s; load {os.getloadavg()}")
    return sets


# -- tables ----------------------------------------------------------------------------------


def interleave(sides: dict[str, Any], rounds: int) -> dict[str, list[Any]]:
    """Each side's results per round; who goes first swaps each round."""
    results: dict[str, list[Any]] = {name: [] for name in sides}
    for index in range(rounds):
        order = list(sides)[:: 1 if index % 2 == 0 else -1]
        for name in order:
            results[name].append(sides[name]())
            print(f"    round {index + 1} {name:10s} {results[name][-1]}", flush=True)
    return results


def table(title: str, rows: list[tuple[str, dict[str, list[tuple[float, float]]]]]) -> None:
    """One line per image set and caption way, against the seed of the same rounds."""
    seed_name = "seed"
    print(f"\n{title}")
    print(
        "| images | caption way | seed images/s | caption images/s | ratio | seed tokens/image | "
        "caption tokens/image | tokens/s ratio | per round (seed / caption) |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for label, results in rows:
        seed = statistics.median(r[0] for r in results[seed_name])
        seed_tok = statistics.mean(r[1] for r in results[seed_name])
        for way in (name for name in results if name != seed_name):
            ours = statistics.median(r[0] for r in results[way])
            ours_tok = statistics.mean(r[1] for r in results[way])
            pairs = zip(results[seed_name], results[way], strict=True)
            rounds = ", ".join(f"{a[0]:.1f}/{b[0]:.1f}" for a, b in pairs)
            print(
                f"| {label} | {way} | {seed:.1f} | {ours:.1f} | {ours / seed:.2f}x | "
                f"{seed_tok:.2f} | {ours_tok:.2f} | {ours * ours_tok / (seed * seed_tok):.2f}x "
                f"| {rounds} |"
            )


def _tokenizer(model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


def _mean_tokens(tokenizer: Any, out: Path) -> float:
    """Mean completion tokens of a caption output, its captions re-tokenized."""
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    counts = [len(tokenizer(r["caption"], add_special_tokens=False).input_ids) for r in lines]
    return sum(counts) / len(counts)


def engine_arguments(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """The same engine settings for both sides: as LLM() arguments and as CLI flags."""
    engine: dict[str, Any] = {
        "dtype": "float32",
        "enforce_eager": True,
        "kv_cache_memory_bytes": 64 * 1024 * 1024,
        "max_model_len": 512,
        "mm_processor_cache_gb": args.mm_cache_gb,
    }
    extra = ["--dtype", "float32", "--enforce-eager", "--kv-cache-memory-bytes", "67108864"]
    extra += ["--max-model-len", "512", "--mm-processor-cache-gb", f"{args.mm_cache_gb:g}"]
    if args.max_num_seqs:
        engine["max_num_seqs"] = args.max_num_seqs
        extra += ["--max-num-seqs", str(args.max_num_seqs)]
    return engine, extra


def offline_side(
    args: argparse.Namespace, model: Path, config: dict[str, Any], work: Path, meter: Any
) -> Any:
    """`caption --config --engine offline` with the gateway's entry: images/s and tokens."""
    from tests.support.processes import VLLM_ENV

    entry = config["models"][0] | {
        "env": {**VLLM_ENV, "VLLM_CACHE_ROOT": str(work / "vllm-cache-offline")}
    }
    path = work / "offline.yaml"
    path.write_text(json.dumps(config | {"data_dir": str(work / "data-off"), "models": [entry]}))
    tokenizer = _tokenizer(model)

    def offline(folder: Path, label: str = "") -> tuple[float, float]:
        out = work / "caption-offline.jsonl"
        way = ["--config", str(path), "--model", entry["name"], "--engine", "offline"]
        with meter:
            rate = caption(way, folder, out, args.max_tokens)
            if label:
                meter.record(label, len(os.listdir(folder)))
        return rate, _mean_tokens(tokenizer, out)

    return offline


def gateway_side(args: argparse.Namespace, url: str, vllm_port: int, work: Path, meter: Any) -> Any:
    """`caption --url` to the gateway: images/s, and tokens from vLLM's own counters."""
    client = ["--url", url, "--model", "tiny-blip2"]
    if args.concurrency:
        client += ["--concurrency", str(args.concurrency)]

    def ours(folder: Path, label: str = "") -> tuple[float, float]:
        tokens, finished = vllm_counters(vllm_port)
        with meter:
            rate = caption(client, folder, work / "caption.jsonl", args.max_tokens)
            if label:
                meter.record(label, len(os.listdir(folder)))
        tokens2, finished2 = vllm_counters(vllm_port)
        return rate, (tokens2 - tokens) / max(1.0, finished2 - finished)

    return ours


def gateway_config(model: Path, extra: list[str], work: Path, vllm_port: int) -> dict[str, Any]:
    """`vlm-gateway serve`'s config: the model as a managed `vllm serve` with `extra` flags."""
    from tests.support.processes import REPO, VLLM_ENV

    entry = {
        "name": "tiny-blip2",
        "backend": "vllm",
        "model": str(model),
        "command": [str(REPO / ".venv-vllm" / "bin" / "vllm")],
        "port": vllm_port,
        "extra_args": extra,
        "env": {**VLLM_ENV, "VLLM_CACHE_ROOT": str(work / "vllm-cache-serve")},
        "liveness_interval": 3600,  # no probe requests inside the timed runs
    }
    config = {
        "data_dir": str(work / "data"),
        "access_log": False,
        "log_level": "warning",
        "models": [entry],
    }
    return config


def bench_vllm(
    args: argparse.Namespace,
    model: Path,
    sets: dict[str, Path],
    work: Path,
    meters: dict[str, Any],
) -> list[tuple[str, dict[str, list[tuple[float, float]]]]]:
    from tests.bench.process_cpu import CpuMeter
    from tests.support.processes import VLLM_ENV, GatewayProcess, free_port

    engine, extra = engine_arguments(args)
    env = {**os.environ, **VLLM_ENV, "VLLM_CACHE_ROOT": str(work / "vllm-cache-seed")}
    vllm_port = free_port()
    config = gateway_config(model, extra, work, vllm_port)
    print(f"starting the seed's offline LLM and `vlm-gateway serve` (managed vLLM {extra})")
    seed = SeedOffline(model, engine, work, env)
    gateway = GatewayProcess(config, work)
    try:
        gateway.start(deadline_s=600)
        seed.wait_ready()
        assert gateway.proc is not None
        meters["caption"] = CpuMeter([gateway.proc.pid], with_children=True)
        meters["seed"] = CpuMeter([seed.proc.pid], with_children=False)
        ours = gateway_side(args, gateway.url, vllm_port, work, meters["caption"])
        meters["offline"] = CpuMeter([], with_children=True)
        offline = offline_side(args, model, config, work, meters["offline"])

        def theirs(folder: Path, label: str = "") -> tuple[float, float]:
            with meters["seed"] as meter:
                result = seed.run(folder, QUESTION, args.max_tokens, work / "captions.json")
                if label:
                    meter.record(label, len(os.listdir(folder)))
            return result

        ours(sets["warm"])  # first requests of each engine are slow
        theirs(sets["warm"])
        rows = []
        for label, folder in sets.items():
            if label == "warm":
                continue
            print(f"  vLLM: {label}", flush=True)
            sides = {
                "seed": lambda f=folder, n=label: theirs(f, n),
                "gateway": lambda f=folder, n=label: ours(f, n),
                "offline": lambda f=folder, n=label: offline(f, n),
            }
            rows.append((label, interleave(sides, args.rounds)))
        return rows
    finally:
        gateway.stop()
        seed.stop()


def bench_blip2(
    args: argparse.Namespace, model: Path, sets: dict[str, Path], work: Path
) -> list[tuple[str, dict[str, list[tuple[float, float]]]]]:
    import torch
    import yaml
    from PIL import Image
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    processor = Blip2Processor.from_pretrained(model)
    hf_model = Blip2ForConditionalGeneration.from_pretrained(model, dtype=torch.float32).eval()
    tokenizer = _tokenizer(model)
    prompt = f"Question: {QUESTION} Answer:"

    def theirs(folder: Path) -> tuple[float, float]:
        names = sorted(n for n in os.listdir(folder) if n.lower().endswith(EXTENSIONS))
        tokens = 0
        started = time.perf_counter()
        with torch.inference_mode():
            for name in names:
                image = Image.open(folder / name).convert("RGB")
                inputs = processor(images=image, text=prompt, return_tensors="pt")
                out = hf_model.generate(**inputs, max_new_tokens=args.max_tokens, do_sample=False)
                new = out[0, inputs["input_ids"].shape[1] :]  # generate() echoes the prompt
                tokenizer.decode(new, skip_special_tokens=True)
                tokens += len(new)
        return len(names) / (time.perf_counter() - started), tokens / len(names)

    entry = {"name": "tiny", "backend": "blip2", "model": str(model), "device": "cpu"}
    config_path = work / "blip2.yaml"
    config_path.write_text(yaml.safe_dump({"data_dir": str(work / "data2"), "models": [entry]}))
    client = ["--config", str(config_path), "--model", "tiny"]
    if args.concurrency:
        client += ["--concurrency", str(args.concurrency)]

    def ours(folder: Path) -> tuple[float, float]:
        out = work / "caption-blip2.jsonl"
        rate = caption(client, folder, out, args.max_tokens)
        return rate, _mean_tokens(tokenizer, out)

    theirs(sets["warm"])
    rows = []
    for label, folder in sets.items():
        if label == "warm":
            continue
        print(f"  BLIP-2 in-process: {label}", flush=True)
        sides = {"seed": lambda f=folder: theirs(f), "gateway": lambda f=folder: ours(f)}
        rows.append((label, interleave(sides, args.rounds)))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=600, help="224x224 JPEGs")
    parser.add_argument("--photos", type=int, default=200, help="2400x1600 JPEGs")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=0, help="caption's (default: its own)")
    parser.add_argument("--max-num-seqs", type=int, default=0, help="both engines (0: vLLM's)")
    parser.add_argument("--mm-cache-gb", type=float, default=0.0, help="both engines")
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)

    from vlm_gateway.cli.tiny_models import ensure_tiny_models

    with work_directory("bench-vs-seed-", args.keep) as work:
        model = ensure_tiny_models(work / "models")["blip2"]
        sets = image_sets(work, args.small, args.photos, (2400, 1600))
        tables = []
        meters: dict[str, Any] = {}
        if not args.skip_vllm:
            rows = bench_vllm(args, model, sets, work, meters)
            tables.append(("vLLM: seed's offline LLM.generate vs caption -> gateway -> vllm", rows))
        if not args.skip_hf:
            rows = bench_blip2(args, model, sets, work)
            tables.append(("BLIP-2: seed's HF loop vs caption with in-process BLIP-2", rows))
        print(
            f"\nmax_tokens {args.max_tokens}, greedy, {args.rounds} round(s), medians; "
            f"max-num-seqs {args.max_num_seqs or 'vLLM default'}, mm processor cache "
            f"{args.mm_cache_gb:g} GB; load at end {os.getloadavg()}"
        )
        for title, rows in tables:
            table(title, rows)
        if meters:
            from tests.bench.process_cpu import print_cpu

            print_cpu("vLLM table", meters)


if __name__ == "__main__":
    main()
