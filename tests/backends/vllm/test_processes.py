"""Config -> managed vLLM processes: check-config prints each process's argv and env, shared
GPUs are validated, and each replica becomes one backend with its own log."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import VLLM_BIN
from vlm_gateway.backends.kinds import build_backends, settings_model
from vlm_gateway.backends.vllm.processes import planned_processes
from vlm_gateway.config.loading import ConfigError, load_settings
from vlm_gateway.server.app import upstream_session

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
# The examples' media flags, as check-config prints them (shell-quoted).
MEDIA_EXAMPLES = {
    "minicpm-o.yaml": (
        """--limit-mm-per-prompt '{"image":4,"video":1,"audio":1}' --trust-request-mm-kwargs """
        """--media-io-kwargs '{"video":{"num_frames":16}}' --trust-remote-code"""
    ),
    "qwen2.5-omni.yaml": (
        """--limit-mm-per-prompt '{"image":4,"video":1,"audio":2}' --trust-request-mm-kwargs """
        """--media-io-kwargs '{"video":{"fps":2}}' --dtype bfloat16"""
    ),
}


def _check_config(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vlm_gateway", "check-config", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_vllm_example_passes_check_config(example):
    result = _check_config(example)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", sorted(MEDIA_EXAMPLES))
def test_media_examples_print_their_flags_inputs_and_limits(name):
    out = _check_config(REPO / "examples" / name).stdout  # no weights: a hub id, not fetched
    assert "--enable-prefix-caching " + MEDIA_EXAMPLES[name] in out
    assert "    inputs: text, image, video, audio\n" in out
    assert "    media: video up to 1 per request, 64 MiB, " in out


@pytest.mark.vllm
def test_vllm_reads_the_media_flags_as_the_gateway_means_them():
    """vLLM 0.32's own parser and MultiModalConfig, on the examples' flags."""
    examples = {}
    for name in MEDIA_EXAMPLES:
        settings = load_settings(settings_model(), REPO / "examples" / name)
        [process] = planned_processes(settings, settings.models[0])
        examples[name] = process.command.media_flags()
    result = subprocess.run(
        [str(VLLM_BIN.with_name("python")), "-c", _VLLM_READS, json.dumps(examples)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    read = json.loads(result.stdout.splitlines()[-1])
    assert read["minicpm-o.yaml"] == {
        "limits": {"image": 4, "video": 1, "audio": 1},
        "media_io_kwargs": {"video": {"num_frames": 16}},
    }
    assert read["qwen2.5-omni.yaml"] == {
        "limits": {"image": 4, "video": 1, "audio": 2},
        "media_io_kwargs": {"video": {"fps": 2}},
    }


_VLLM_READS = """
import json, sys
from vllm.config.multimodal import MultiModalConfig
from vllm.engine.arg_utils import EngineArgs
from vllm.utils.argparse_utils import FlexibleArgumentParser

parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
read = {}
for name, flags in json.loads(sys.argv[1]).items():
    # --trust-request-mm-kwargs is the API server's flag (`vllm serve` reads it), not the engine's
    args, unknown = parser.parse_known_args(flags)
    assert unknown == ["--trust-request-mm-kwargs"], unknown
    config = MultiModalConfig(
        limit_per_prompt=args.limit_mm_per_prompt, media_io_kwargs=args.media_io_kwargs
    )
    limits = {kind: config.get_limit_per_prompt(kind) for kind in ("image", "video", "audio")}
    read[name] = {"limits": limits, "media_io_kwargs": config.media_io_kwargs}
print(json.dumps(read))
"""


def test_check_config_prints_each_process_argv_env_and_gpu_share():
    out = _check_config(REPO / "examples" / "vllm-two-models-one-gpu.yaml").stdout
    assert (
        "argv: vllm serve Salesforce/blip2-opt-2.7b --served-model-name blip2 --host "
        "127.0.0.1 --port <free port> --gpu-memory-utilization 0.4 --enable-prefix-caching "
        "--limit-mm-per-prompt '{\"image\":8}' --trust-request-mm-kwargs --dtype float16"
    ) in out
    assert (
        "argv: vllm serve fancyfeast/llama-joycaption-beta-one-hf-llava --served-model-name "
        "joycaption --host 127.0.0.1 --port <free port> --max-model-len 4096 "
        "--gpu-memory-utilization 0.55 --enable-prefix-caching --limit-mm-per-prompt "
        "'{\"image\":8}' --trust-request-mm-kwargs --dtype bfloat16"
    ) in out
    assert out.count("env additions: CUDA_VISIBLE_DEVICES=0") == 2
    assert "max_model_len: auto: start at 4096" in out


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_over_committed_gpu_is_a_config_error(tmp_path):
    path = _config(
        tmp_path,
        """
models:
  - {name: a, backend: vllm, model: m, gpus: [0], gpu_memory_utilization: 0.6}
  - {name: b, backend: vllm, model: m, gpus: [0], gpu_memory_utilization: 0.5}
""",
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(settings_model(), path)
    assert "GPU 0" in str(caught.value) and "1.10" in str(caught.value)


def test_extra_args_may_not_set_what_the_gateway_sets(tmp_path):
    path = _config(
        tmp_path,
        """
models:
  - {name: a, backend: vllm, model: m, max_model_len: auto, extra_args: ["--max-model-len", "9"]}
  - {name: b, backend: vllm, model: m, extra_args: ["--port=9000"]}
""",
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(settings_model(), path)
    text = str(caught.value)
    assert "--max-model-len is set by the gateway" in text and "--port is set by" in text


def test_extra_args_may_not_set_the_media_flags_in_any_spelling(tmp_path):
    for flag, instead in [
        ('--limit-mm-per-prompt={"image":2}', "use images.max_images, media.video.max_parts"),
        ("--limit_mm_per_prompt.video", "use images.max_images, media.video.max_parts"),
        ("--media-io-kwargs", "use media.video.num_frames or media.video.fps"),
    ]:
        path = _config(
            tmp_path,
            "models:\n  - name: a\n    backend: vllm\n    model: m\n"
            f"    extra_args: ['{flag}', '1']\n",
        )
        with pytest.raises(ConfigError) as caught:
            load_settings(settings_model(), path)
        assert "is set by the gateway; " + instead in str(caught.value), flag


def _argv(config: dict) -> list[str]:
    settings = settings_model().model_validate(config)
    [process] = planned_processes(settings, settings.models[0])
    return process.command.argv()


def _flag(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def test_media_flags_follow_the_models_inputs_and_limits():
    omni = {
        "name": "omni",
        "backend": "vllm",
        "model": "m",
        "input_modalities": ["text", "image", "video", "audio"],
        "images": {"max_images": 3},
        "media": {"audio": {"max_parts": 2}, "video": {"num_frames": 16}},
    }
    argv = _argv({"media": {"video": {"fps": 2}}, "models": [omni]})
    assert _flag(argv, "--limit-mm-per-prompt") == '{"image":3,"video":1,"audio":2}'
    # The model's own choice (num_frames) wins over the gateway-wide fps: one choice, no mix.
    assert _flag(argv, "--media-io-kwargs") == '{"video":{"num_frames":16}}'

    # A hub id with nothing local to read takes text and image: the gateway-wide image limit,
    # and no frame sampling, as it takes no video.
    image_only = {"name": "v", "backend": "vllm", "model": "org/some-vlm"}
    argv = _argv({"media": {"video": {"num_frames": 8}}, "models": [image_only]})
    assert _flag(argv, "--limit-mm-per-prompt") == '{"image":8}'
    assert "--media-io-kwargs" not in argv
    text_only = {**image_only, "input_modalities": ["text"]}
    assert "--limit-mm-per-prompt" not in _argv({"models": [text_only]})


def test_frame_sampling_is_the_server_default_a_request_may_override():
    """`--media-io-kwargs` is vLLM's default for every request; a request's own
    `media_io_kwargs` (forwarded as sent to vLLM-backed models) is merged over it by vLLM,
    per request. Nothing in the gateway's argv depends on the request."""
    video = {
        "name": "vid",
        "backend": "vllm",
        "model": "m",
        "input_modalities": ["text", "video"],
        "media": {"video": {"num_frames": 16}},
    }
    argv = _argv({"models": [video]})
    assert argv[argv.index("--enable-prefix-caching") + 1 :] == [
        "--limit-mm-per-prompt",
        '{"video":1}',
        "--trust-request-mm-kwargs",  # the gateway bounds a request's own (request_kwargs.py)
        "--media-io-kwargs",
        '{"video":{"num_frames":16}}',
    ]


def test_replicas_become_backends_with_their_own_port_and_log(tmp_path):
    settings = settings_model().model_validate(
        {
            "data_dir": str(tmp_path),
            "models": [
                {"name": "blip2", "backend": "vllm", "model": "m", "replicas": 2, "port": 9100}
            ],
        }
    )

    async def build():  # the session needs a running loop; the backends are never started
        async with upstream_session(settings) as client:
            return build_backends(settings, client)

    backends = asyncio.run(build())
    assert [b.name for b in backends] == ["blip2", "blip2"]
    assert [b.command.argv()[b.command.argv().index("--port") + 1] for b in backends] == [
        "9100",
        "9101",
    ]
    assert [b.describe()["log_file"] for b in backends] == [
        str(tmp_path / "logs" / "vllm-blip2-0.log"),
        str(tmp_path / "logs" / "vllm-blip2-1.log"),
    ]
    assert all(b.describe()["state"] == "starting" for b in backends)
