"""`vlm-gateway serve --workers 2` as real processes on 127.0.0.1 (a supervisor and two worker
processes on one listening socket), for the tests of that mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import yaml
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from tests.support.polling import wait_until
from tests.support.processes import REPO, free_port, stop_process_group, wait_http


class WorkersGateway:
    """`vlm-gateway serve --workers 2 --config FILE` on a free loopback port."""

    def __init__(self, config: dict, workdir: Path) -> None:
        self.port = free_port()
        self.data_dir = workdir / "data"
        config_path = workdir / "gateway.yaml"
        config_path.write_text(yaml.safe_dump({"data_dir": str(self.data_dir), **config}))
        self.log_path = workdir / "gateway.log"
        argv = [sys.executable, "-m", "vlm_gateway", "serve", "--config", str(config_path)]
        argv += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "2"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
            )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_http(self.url + "/ready", 120, self.proc, self.log_path)
        wait_until(lambda: len(self.workers()) == 2, "two workers running")

    def children(self, marker: str) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == self.proc.pid and marker in cmdline:
                found.append(int(entry.name))
        return sorted(found)

    def workers(self) -> list[int]:
        return self.children("vlm_gateway.cli.worker")

    def served_by(self) -> dict[int, float]:
        """Requests each worker has counted (its own prometheus_client multiprocess file)."""
        (metrics_dir,) = (self.data_dir / "run").glob("supervisor-*/metrics")
        counts: dict[int, float] = {}
        for path in metrics_dir.glob("counter_*.db"):
            pid = int(path.stem.split("_")[1])
            values = MmapedDict.read_all_values_from_file(str(path))
            counts[pid] = sum(v for key, v, *_ in values if '"vlmgw_requests_total"' in key)
        return counts

    def scrape(self) -> dict[tuple, float]:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        stop_process_group(self.proc)
