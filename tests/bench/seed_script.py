"""The seed's batch script (vLLM's offline `LLM.generate`, batches of 16, full-size Pillow
decode), as a long-lived worker for bench_caption_vs_seed.py: `SeedOffline` runs this file under
`.venv-vllm/bin/python` (so: only the standard library at module level)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULT = "SEED-RESULT "
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")  # the seed's list


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

    def run(self, folder: Path, question: str, max_tokens: int, out: Path) -> tuple[float, float]:
        """(images/s, mean completion tokens)."""
        assert self.proc.stdin is not None
        job = {"folder": str(folder), "question": question, "max_tokens": max_tokens}
        self.proc.stdin.write(json.dumps(job | {"out": str(out)}) + "\n")
        self.proc.stdin.flush()
        answer = self._answer()
        return answer["images"] / answer["s"], answer["tokens"] / answer["images"]

    def stop(self) -> None:
        from tests.support.processes import stop_process_group

        stop_process_group(self.proc, grace_s=15)
        self.log.close()


if __name__ == "__main__":
    seed_worker(sys.argv[2], json.loads(sys.argv[3]))
