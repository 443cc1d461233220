"""The package's architecture as checks that fail (docs/architecture.md): imports point only
down the layers, and the server starts without torch or transformers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vlm_gateway"

# Lowest first. A module may import its own layer's folder and any layer below; layers on one
# level (launch, images) may not import each other.
LAYERS: dict[str, int] = {
    "core": 0,
    "launch": 1,
    "images": 1,
    "media": 2,  # video and audio, on top of the images layer's fetcher
    "config": 3,
    "backends": 4,
    "server": 5,
    "cli": 6,
    "__main__": 7,
}
# Third-party packages only these layers may import: Swagger UI's files belong to the HTTP face.
CONFINED: dict[str, set[str]] = {"fastapi_swagger": {"server"}}


def layer_of(module: str) -> str:
    """'vlm_gateway.server.routes.chat' -> 'server'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def module_name(path: Path, package: Path = PACKAGE) -> str:
    relative = path.relative_to(package.parent).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def imported_modules(path: Path, package_root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, absolute module) for every import of our package in the file, type-only ones
    included: a layer that needs another's types for checking depends on it all the same."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path, package_root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
    return [(line, module) for line, module in found if module.split(".")[0] == "vlm_gateway"]


def layer_violations(package: Path = PACKAGE) -> list[str]:
    problems = []
    for path in sorted(package.rglob("*.py")):
        here = layer_of(module_name(path, package))
        if here not in LAYERS:
            if path.parent != package or path.name != "__init__.py":
                problems.append(f"{path}: in no layer; add its folder to LAYERS")
            continue
        for line, module in imported_modules(path, package):
            there = layer_of(module)
            if there == here:
                continue
            if there not in LAYERS or LAYERS[there] >= LAYERS[here]:
                problems.append(
                    f"{path.relative_to(package.parent)}:{line}: {here} imports "
                    f"{module} ({there or 'the package root'})"
                )
    return problems


def test_imports_point_only_down_the_layers():
    assert layer_violations() == []


def confined_violations(package: Path = PACKAGE) -> list[str]:
    problems = []
    for path in sorted(package.rglob("*.py")):
        here = layer_of(module_name(path, package))
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                allowed = CONFINED.get(name.split(".")[0])
                if allowed is not None and here not in allowed:
                    problems.append(f"{path.relative_to(package.parent)}:{node.lineno}: {name}")
    return problems


def test_confined_packages_are_imported_only_where_allowed():
    assert confined_violations() == []


def test_the_check_catches_an_upward_and_a_sideways_import(tmp_path):
    """The check itself, on a copy of the package with two bad imports added."""
    copy = tmp_path / "vlm_gateway"
    for path in PACKAGE.rglob("*.py"):
        target = copy / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    core_errors = copy / "core" / "errors.py"
    core_errors.write_text(core_errors.read_text() + "\nfrom vlm_gateway.server import app\n")
    fetch = copy / "images" / "fetch.py"
    fetch.write_text(fetch.read_text() + "\nfrom ..launch import process\n")
    problems = layer_violations(copy)
    assert len(problems) == 2
    assert "core imports vlm_gateway.server" in problems[0] + problems[1]
    assert "images imports vlm_gateway.launch (launch)" in problems[0] + problems[1]


def test_the_server_and_cli_import_without_torch_or_transformers():
    """Only the BLIP-2 backend needs them, and only when it loads a model: a gateway in front
    of vLLM must start without them (they are an optional extra)."""
    probe = (
        "import sys, vlm_gateway.server.app, vlm_gateway.cli.main, vlm_gateway.backends.kinds\n"
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
