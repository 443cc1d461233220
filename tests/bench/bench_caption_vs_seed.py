"""`vlm-gateway caption` against the seed's batch script (not a pytest test; prints figures).

Table 1, vLLM: the seed's way (vLLM offline `LLM.generate`, batches of 16, every image opened
with Pillow at full size, run by `.venv-vllm/bin/python`) against `vlm-gateway caption --url`
to a `vlm-gateway serve` whose model is a managed `vllm serve` (`backend: vllm`).
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
neither side does: mean completion tokens are printed for each side (vLLM side: exact, from
vLLM's counters; the in-process BLIP-2 caption side: the captions re-tokenized) and tokens/s.
Engines start once; rounds alternate the order (seed first, then caption first, ...). Each
figure is the median over rounds of images/s, as each side times itself: the seed's loop from
its first `Image.open` to its last `generate`, caption from its own summary line (start-up
excluded on both sides).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Only the standard library at module level: `--seed-worker` runs under .venv-vllm's python.

RESULT = "SEED-RESULT "
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")  # the seed's list
QUESTION = "What is in the picture?"
_SUMMARY = re.compile(r"(\d+) captioned, (\d+) errors, .* in ([\d.]+) s")


# -- the seed's offline vLLM script, as a long-lived worker (runs in .venv-vllm) ---------------


def seed_worker(model: str, engine: dict[str, Any]) -> None:
    """Create the LLM once, then caption each folder named on stdin the seed's way."""
    from PIL import Image
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, trust_remote_code=True, **engine)
    print(RESULT + json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        folder = job["folder"]
        prompt = f"Question: {job['question']} Answer:"
        params = SamplingParams(temperature=0.0, max_tokens=job["max_tokens"])
        names = sorted(n for n in os.listdir(folder) if n.lower().endswith(EXTENSIONS))
        results, tokens = [], 0
        started = time.perf_counter()
        for start in range(0, len(names), 16):
            batch, stems = [], []
            for name in names[start : start + 16]:
                try:
                    image = Image.open(os.path.join(folder, name)).convert("RGB")
                except Exception as exc:
                    print(f"skipped {name}: {exc}", file=sys.stderr)
                    continue
                batch.append({"prompt": prompt, "multi_modal_data": {"image": image}})
                stems.append(os.path.splitext(name)[0])
            outputs = llm.generate(batch, params, use_tqdm=False)
            for stem, output in zip(stems, outputs, strict=True):
                results.append({"id": stem, "caption": output.outputs[0].text})
                tokens += len(output.outputs[0].token_ids)
        seconds = time.perf_counter() - started
        with open(job["out"], "w") as out:
            json.dump(results, out)
        print(RESULT + json.dumps({"images": len(results), "tokens": tokens, "s": seconds}))
        sys.stdout.flush()


class SeedOffline:
    def __init__(self, model: Path, engine: dict[str, Any], work: Path, env: dict) -> None:
        from tests.support.processes import REPO

        self.log = open(work / "seed-offline.log", "ab")  # noqa: SIM115
        python = REPO / ".venv-vllm" / "bin" / "python"
        argv = [str(python), __file__, "--seed-worker", str(model), json.dumps(engine)]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
            start_new_session=True,
        )

    def _answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(RESULT):
                return json.loads(line[len(RESULT) :])
        raise RuntimeError(f"the seed worker exited ({self.proc.wait()}): see {self.log.name}")

    def wait_ready(self) -> None:
        self._answer()

    def run(self, folder: Path, max_tokens: int, out: Path) -> tuple[float, float]:
        """(images/s, mean completion tokens)."""
        assert self.proc.stdin is not None
        job = {"folder": str(folder), "question": QUESTION, "max_tokens": max_tokens}
        self.proc.stdin.write(json.dumps(job | {"out": str(out)}) + "\n")
        self.proc.stdin.flush()
        answer = self._answer()
        return answer["images"] / answer["s"], answer["tokens"] / answer["images"]

    def stop(self) -> None:
        from tests.support.processes import stop_process_group

        stop_process_group(self.proc, grace_s=15)
        self.log.close()


# -- CPU by process --------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _role(pid: str) -> str:
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "?"
    if comm.startswith("VLLM::"):
        return comm
    if " serve " in cmdline and "vllm" in cmdline.split(" serve ", 1)[0]:
        return "vllm API server"
    if "vlm_gateway serve" in cmdline:
        return "gateway (serve)"
    if "--seed-worker" in cmdline:
        return "seed script (LLM + Pillow)"
    return comm


def tree_cpu(root: int) -> dict[str, float]:
    """CPU seconds (user + system, all threads) of `root` and its live descendants, by role
    (the gateway starts its vLLM in a process group of its own, so groups would miss it)."""
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stats[int(entry)] = (
                    Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                )
            except OSError:
                continue
    children: dict[int, list[int]] = {}
    for pid, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(pid)  # field 4 of stat: the parent
    totals: dict[str, float] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        if pid in stats:
            role = _role(str(pid))
            utime, stime = int(stats[pid][11]), int(stats[pid][12])
            totals[role] = totals.get(role, 0.0) + (utime + stime) / _TICK
    return totals


def children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU ms per image by process over one timed run, for some process groups (and the
    `caption` command with its preparation pool: this script's waited-for children)."""

    def __init__(self, groups: list[int], with_children: bool) -> None:
        self.groups, self.with_children = groups, with_children
        self.runs: dict[str, list[dict[str, float]]] = {}

    def __enter__(self) -> CpuMeter:
        self.before = self._sample()
        return self

    def _sample(self) -> dict[str, float]:
        sample: dict[str, float] = {}
        for group in self.groups:
            for role, seconds in tree_cpu(group).items():
                sample[role] = sample.get(role, 0.0) + seconds
        if self.with_children:
            sample["caption command (+ its pool)"] = children_cpu()
        return sample

    def record(self, label: str, images: int) -> None:
        after = self._sample()
        per_image = {k: (v - self.before.get(k, 0.0)) * 1000 / images for k, v in after.items()}
        self.runs.setdefault(label, []).append(per_image)

    def __exit__(self, *exc: object) -> None:
        pass


def print_cpu(title: str, meters: dict[str, CpuMeter]) -> None:
    print(f"\n{title}: CPU ms per image by process (mean over rounds)")
    print("| images | side | process | CPU ms/image |\n| --- | --- | --- | ---: |")
    for side, meter in meters.items():
        for label, runs in meter.runs.items():
            roles = sorted({role for run in runs for role in run})
            for role in roles:
                value = statistics.mean(run.get(role, 0.0) for run in runs)
                if value >= 0.05:
                    print(f"| {label} | {side} | {role} | {value:.2f} |")
            total = statistics.mean(sum(run.values()) for run in runs)
            print(f"| {label} | {side} | **all** | {total:.2f} |")


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
    seed_name, ours_name = "seed", "gateway"
    print(f"\n{title}")
    print(
        "| images | seed images/s | caption images/s | ratio | seed tokens/image | "
        "caption tokens/image | tokens/s ratio | per round (seed / caption) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for label, results in rows:
        seed = statistics.median(r[0] for r in results[seed_name])
        ours = statistics.median(r[0] for r in results[ours_name])
        seed_tok = statistics.mean(r[1] for r in results[seed_name])
        ours_tok = statistics.mean(r[1] for r in results[ours_name])
        pairs = zip(results[seed_name], results[ours_name], strict=True)
        rounds = ", ".join(f"{a[0]:.1f}/{b[0]:.1f}" for a, b in pairs)
        print(
            f"| {label} | {seed:.1f} | {ours:.1f} | {ours / seed:.2f}x | {seed_tok:.2f} | "
            f"{ours_tok:.2f} | {ours * ours_tok / (seed * seed_tok):.2f}x | {rounds} |"
        )


def bench_vllm(
    args: argparse.Namespace,
    model: Path,
    sets: dict[str, Path],
    work: Path,
    meters: dict[str, CpuMeter],
) -> list[tuple[str, dict[str, list[tuple[float, float]]]]]:
    from tests.support.processes import REPO, VLLM_ENV, GatewayProcess, free_port

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
    env = {**os.environ, **VLLM_ENV, "VLLM_CACHE_ROOT": str(work / "vllm-cache-seed")}
    vllm_port = free_port()
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
    print(f"starting the seed's offline LLM and `vlm-gateway serve` (managed vLLM {extra})")
    seed = SeedOffline(model, engine, work, env)
    gateway = GatewayProcess(config, work)
    try:
        gateway.start(deadline_s=600)
        seed.wait_ready()
        client = ["--url", gateway.url, "--model", "tiny-blip2"]
        if args.concurrency:
            client += ["--concurrency", str(args.concurrency)]

        assert gateway.proc is not None
        meters["caption"] = CpuMeter([gateway.proc.pid], with_children=True)
        meters["seed"] = CpuMeter([seed.proc.pid], with_children=False)

        def ours(folder: Path, label: str = "") -> tuple[float, float]:
            tokens, finished = vllm_counters(vllm_port)
            with meters["caption"] as meter:
                rate = caption(client, folder, work / "caption.jsonl", args.max_tokens)
                if label:
                    meter.record(label, len(os.listdir(folder)))
            tokens2, finished2 = vllm_counters(vllm_port)
            return rate, (tokens2 - tokens) / max(1.0, finished2 - finished)

        def theirs(folder: Path, label: str = "") -> tuple[float, float]:
            with meters["seed"] as meter:
                result = seed.run(folder, args.max_tokens, work / "captions.json")
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
    from transformers import AutoTokenizer, Blip2ForConditionalGeneration, Blip2Processor

    processor = Blip2Processor.from_pretrained(model)
    hf_model = Blip2ForConditionalGeneration.from_pretrained(model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model)
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
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        counts = [len(tokenizer(r["caption"], add_special_tokens=False).input_ids) for r in lines]
        return rate, sum(counts) / len(counts)

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

    import shutil

    from vlm_gateway.cli.tiny_models import ensure_tiny_models

    work = Path(tempfile.mkdtemp(prefix="bench-vs-seed-"))
    try:
        model = ensure_tiny_models(work / "models")["blip2"]
        started = time.monotonic()
        sets = {
            "warm": make_images(work / "warm", 32, 224, 224, 10_000_000),
            f"{args.small} x 224x224 JPEG": make_images(work / "small", args.small, 224, 224, 0),
            f"{args.photos} x 2400x1600 photo-like JPEG": make_images(
                work / "photos", args.photos, 2400, 1600, 1_000_000
            ),
        }
        print(f"images generated in {time.monotonic() - started:.1f} s; load {os.getloadavg()}")
        tables = []
        meters: dict[str, CpuMeter] = {}
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
            print_cpu("vLLM table", meters)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--seed-worker":
        seed_worker(sys.argv[2], json.loads(sys.argv[3]))
    else:
        main()
