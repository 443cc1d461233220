"""What `pip install .` puts into site-packages: exactly one import package, `vlm_gateway`,
and the `vlm-gateway` console script."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_only_the_vlm_gateway_package(tmp_path):
    # Built from a copy of what the Dockerfile copies: setuptools reuses a checkout's build/.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(
        REPO / "vlm_gateway", source / "vlm_gateway", ignore=shutil.ignore_patterns("__pycache__")
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("vlm_gateway-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(name.split("/")[0] for name in names if name.endswith(".dist-info/METADATA"))
        top_level = {name.split("/")[0] for name in names} - {info}
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    assert top_level == {"vlm_gateway"}
    assert "vlm-gateway = vlm_gateway.cli.main:main" in entry_points
    assert "vlm_gateway/backends/blip2/__init__.py" in names  # subpackages are found too
