"""docker/gateway.Dockerfile's steps, followed on this machine (no container engine runs here).

A folder stands for the image's `/`: COPY copies from the build context into it, RUN runs in
its WORKDIR with the WORKDIR's image path rewritten to the folder's, ENV, ENTRYPOINT and CMD are
read as written. FROM is skipped: the vLLM base image only adds `vllm`, which the gateway's own
install never uses; so is a RUN that installs into that image's own Python (`uv pip install
--system`, vLLM's audio decoders): here it would install into this machine's. An instruction
this module does not know fails the build, so a changed Dockerfile cannot pass by being half
followed.

    layout = build_image_layout(DOCKERFILE, REPO, tmp_path / "root", tmp_path / "build.log")
    layout.host_path("/config/gateway.yaml")   # where a mounted file would be
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

# pip's cache is the one thing taken out of RUN: the image keeps none, a test run reuses it.
_DROPPED_FROM_RUN = (" --no-cache-dir",)
_SKIPPED = {"ARG", "FROM", "EXPOSE", "LABEL"}  # no effect on what gets installed or run
_BASE_IMAGE_RUN = "uv pip install --system "  # the vLLM image's Python, not the gateway's


@dataclass
class ImageLayout:
    root: Path  # stands for the image's "/"
    workdir: str = "/"
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)

    def host_path(self, image_path: str) -> Path:
        absolute = PurePosixPath(self.workdir, image_path)  # relative paths start at WORKDIR
        return self.root.joinpath(*absolute.parts[1:])

    def host_command(self, command: str) -> str:
        """A RUN line with the WORKDIR's image path pointing at its host folder."""
        for dropped in _DROPPED_FROM_RUN:
            command = command.replace(dropped, "")
        if self.workdir == "/":
            return command
        return command.replace(self.workdir, str(self.host_path(self.workdir)))


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) for each instruction: comments dropped, continued lines joined."""
    found: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip().removesuffix("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            keyword, _, arguments = pending.strip().partition(" ")
            found.append((keyword.upper(), arguments.strip()))
            pending = ""
    return found


def build_image_layout(dockerfile: Path, context: Path, root: Path, log: Path) -> ImageLayout:
    layout = ImageLayout(root)
    for keyword, arguments in instructions(dockerfile.read_text()):
        if keyword in _SKIPPED:
            continue
        if keyword == "WORKDIR":
            layout.workdir = str(PurePosixPath(layout.workdir, arguments))
            layout.host_path(layout.workdir).mkdir(parents=True, exist_ok=True)
        elif keyword == "ENV":
            layout.env.update(_env_pairs(arguments))
        elif keyword == "COPY":
            _copy(layout, context, shlex.split(arguments))
        elif keyword == "RUN" and arguments.startswith(_BASE_IMAGE_RUN):
            with open(log, "a") as out:
                out.write(f"\n(skipped, the base image's Python) $ {arguments}\n")
        elif keyword == "RUN":
            _run(layout, arguments, log)
        elif keyword in ("ENTRYPOINT", "CMD"):
            setattr(layout, keyword.lower(), _exec_form(keyword, arguments))
        else:
            raise ValueError(f"{keyword} is not followed here: teach tests/support/dockerfile.py")
    return layout


def _env_pairs(arguments: str) -> dict[str, str]:
    pairs = [word.partition("=") for word in shlex.split(arguments)]
    if not all(sep for _, sep, _ in pairs):
        raise ValueError(f"ENV {arguments}: write it as KEY=value")
    return {key: value for key, _, value in pairs}


def _copy(layout: ImageLayout, context: Path, words: list[str]) -> None:
    if any(word.startswith("--") for word in words):
        raise ValueError(f"COPY {' '.join(words)}: flags are not followed here")
    *sources, dest = words
    into_folder = dest.endswith("/") or len(sources) > 1
    for source in sources:
        origin = context / source
        target = layout.host_path(dest)
        if origin.is_dir():  # COPY copies a folder's contents, not the folder
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(origin, target, ignore=ignore, dirs_exist_ok=True)
            continue
        if into_folder:
            target.mkdir(parents=True, exist_ok=True)
            target = target / origin.name
        shutil.copy2(origin, target)


def _run(layout: ImageLayout, command: str, log: Path) -> None:
    with open(log, "ab") as out:
        out.write(f"\n$ {layout.host_command(command)}\n".encode())
        out.flush()
        result = subprocess.run(
            ["/bin/sh", "-c", layout.host_command(command)],
            cwd=layout.host_path(layout.workdir),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **layout.env},
            timeout=600,
        )
    if result.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise RuntimeError(f"RUN {command} failed ({result.returncode}):\n{tail}")


def _exec_form(keyword: str, arguments: str) -> list[str]:
    try:
        argv = json.loads(arguments)
    except ValueError:
        raise ValueError(f"{keyword} {arguments}: use the exec form, a JSON list") from None
    if not isinstance(argv, list) or not all(isinstance(arg, str) for arg in argv):
        raise ValueError(f"{keyword} {arguments}: use the exec form, a JSON list of strings")
    return argv
