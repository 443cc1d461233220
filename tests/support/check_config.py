"""`vlm-gateway check-config` on a config the test writes, as a user runs it (its own process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.processes import REPO


def check_config(
    config: dict, directory: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    path = directory / "check-config.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "vlm_gateway", "check-config", str(path)],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        text=True,
        capture_output=True,
        timeout=60,
    )
