"""`vlm-gateway check-config` as a user runs it."""

import subprocess
import sys
import tomllib
from pathlib import Path

import vlm_gateway


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "vlm_gateway", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def check_config(tmp_path, yaml_text: str):
    path = tmp_path / "g.yaml"
    path.write_text(yaml_text)
    return run_cli("check-config", str(path))


def test_check_config_prints_the_plan(tmp_path):
    result = check_config(
        tmp_path,
        "models:\n"
        "  - {name: llava, backend: openai, base_url: 'http://127.0.0.1:8001/v1'}\n"
        "  - {name: llava, backend: openai, base_url: 'http://127.0.0.1:8002/v1',"
        " upstream_model: m2, api_key: secret-key}\n",
    )
    assert result.returncode == 0, result.stderr
    assert "llava (2 replicas" in result.stdout
    assert "http://127.0.0.1:8002/v1" in result.stdout and "upstream model: m2" in result.stdout
    assert "secret-key" not in result.stdout


def test_check_config_exits_1_with_reasons(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("models:\n  - {name: a, backend: openai}\n")
    result = run_cli("check-config", str(path))
    assert result.returncode == 1
    assert f"{path}:2: models[0].base_url: required key is missing" in result.stderr


def test_check_config_says_each_models_image_limit(tmp_path):
    result = check_config(
        tmp_path,
        "models:\n"
        "  - {name: remote, backend: openai, base_url: 'http://127.0.0.1:8001/v1',"
        " images: {max_images: 3}}\n"
        "  - {name: captions, backend: blip2, model: /nowhere}\n",
    )
    assert result.returncode == 0, result.stderr
    plan = result.stdout.splitlines()
    assert plan[plan.index("- remote") + 1].startswith("    images: at most 3 per request")
    assert plan[plan.index("- captions") + 1].startswith("    images: at most 1 per request")


def test_version_prints_the_installed_package_version():
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text())["project"]["version"]
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"vlm-gateway {declared}"
    assert vlm_gateway.__version__ == declared
