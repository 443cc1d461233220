"""CPU seconds by process over a timed run, for the caption benchmarks (standard library
only: it is imported where vLLM's interpreter runs the seed's worker)."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

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


def group_cpu_seconds(leader: int) -> float:
    """CPU time (user + system, all threads) of every live process in the leader's process
    group: a server's worker processes and LiteLLM's children count too."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == leader:  # pgrp
            total += int(fields[11]) + int(fields[12])
    return total / _TICK
