"""The settings of loading on demand (docs/on-demand.md): what check-config refuses, naming the
key, how a shared GPU is split when some of its models take turns, and what the plan and the
start-up lines say about which models load when and which fit together."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.backends.test_registry import StubBackend
from vlm_gateway.backends.kinds import settings_model
from vlm_gateway.backends.registry import BackendRegistry
from vlm_gateway.config.load_budget import LoadBudget
from vlm_gateway.config.loading import ConfigError, load_settings
from vlm_gateway.config.plan import describe_plan
from vlm_gateway.server.startup import startup_summary


def _vllm(name: str, **keys) -> dict:
    return {"name": name, "backend": "vllm", "model": f"/models/{name}", **keys}


def _load(tmp_path: Path, config: dict):
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return load_settings(settings_model(), path)


def _problems(tmp_path: Path, config: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, config)
    return "\n".join(caught.value.reasons)


def test_a_remote_upstream_cannot_load_on_demand(tmp_path):
    remote = {"name": "r", "backend": "openai", "base_url": "http://h/v1", "load": "on_demand"}
    problems = _problems(tmp_path, {"models": [remote]})
    assert "gateway.yaml:" in problems and "models[0]" in problems
    assert "load: on_demand is not for `backend: openai` models" in problems


def test_on_demand_keys_on_a_startup_model_are_refused_naming_them(tmp_path):
    problems = _problems(tmp_path, {"models": [_vllm("a", idle_unload="5m", load_queue=3)]})
    assert "idle_unload, load_queue: only for `load: on_demand` models" in problems


@pytest.mark.parametrize(
    "given, seconds",
    [("90s", 90.0), ("10m", 600.0), ("1.5h", 5400.0), (30, 30.0), ("never", "never")],
)
def test_idle_unload_takes_durations(tmp_path, given, seconds):
    settings = _load(tmp_path, {"models": [_vllm("a", load="on_demand", idle_unload=given)]})
    assert settings.models[0].idle_unload == seconds


def test_a_bad_duration_names_the_key(tmp_path):
    problems = _problems(tmp_path, {"models": [_vllm("a", load="on_demand", idle_unload="soon")]})
    assert "models[0].idle_unload" in problems and 'duration like "10m"' in problems


def test_max_loaded_models_must_leave_room_for_an_on_demand_model(tmp_path):
    config = {
        "max_loaded_models": 2,
        "models": [_vllm("a"), _vllm("b"), _vllm("c", load="on_demand")],
    }
    problems = _problems(tmp_path, config)
    assert "max_loaded_models: 2 leaves no room for the on-demand models (c)" in problems
    assert "2 load at startup (a, b)" in problems


def test_remote_upstreams_do_not_count_in_max_loaded_models(tmp_path):
    remote = {"name": "r", "backend": "openai", "base_url": "http://h/v1"}
    settings = _load(
        tmp_path, {"max_loaded_models": 1, "models": [remote, _vllm("a", load="on_demand")]}
    )
    assert LoadBudget.of(settings).resident == ()


def test_replicas_of_one_model_agree_on_load(tmp_path):
    problems = _problems(tmp_path, {"models": [_vllm("a", load="on_demand"), _vllm("a")]})
    assert "every replica must have the same `load`" in problems


def test_on_demand_models_sharing_a_gpu_each_get_what_the_startup_ones_leave(tmp_path):
    config = {
        "models": [
            _vllm("resident", gpus=[0], gpu_memory_utilization=0.35),
            _vllm("joy", gpus=[0], load="on_demand"),
            _vllm("mini", gpus=[0], load="on_demand"),
        ]
    }
    settings = _load(tmp_path, config)
    assert settings.gpu_shares() == {("resident", 0): 0.35, ("joy", 0): 0.6, ("mini", 0): 0.6}
    assert LoadBudget.of(settings).groups(["joy", "mini"]) == [("joy",), ("mini",)]


def test_an_on_demand_model_that_could_never_fit_is_refused(tmp_path):
    config = {
        "models": [
            _vllm("resident", gpus=[0], gpu_memory_utilization=0.6),
            _vllm("big", gpus=[0], load="on_demand", gpu_memory_utilization=0.5),
        ]
    }
    problems = _problems(tmp_path, config)
    assert "GPU 0: big[0] (load: on_demand) claims 0.5 of it" in problems
    assert "could never load" in problems


def test_the_plan_says_what_loads_when_and_what_fits_together(tmp_path):
    config = {
        "max_loaded_models": 3,
        "models": [
            _vllm("blip2", gpus=[0], gpu_memory_utilization=0.3),
            _vllm("joy", gpus=[0], load="on_demand", idle_unload="10m", load_timeout=120),
            _vllm("mini", gpus=[0], load="on_demand", gpu_memory_utilization=0.3),
            _vllm("small", gpus=[0], load="on_demand", gpu_memory_utilization=0.2),
        ],
    }
    plan = describe_plan(_load(tmp_path, config))
    assert (
        "loading: at startup blip2; on demand joy (idle_unload 10m), mini (idle_unload never), "
        "small (idle_unload never)"
    ) in plan
    assert "  loaded together at most: {mini, small}; {joy}" in plan
    assert (
        "    loads on demand: requests wait up to 120 s (at most 64 at once); unloaded after "
        "10m idle"
    ) in plan


def test_the_startup_lines_say_which_models_load_on_demand(tmp_path):
    settings = _load(
        tmp_path,
        {
            "max_loaded_models": 1,
            "models": [_vllm("a", load="on_demand"), _vllm("b", load="on_demand")],
        },
    )
    registry = BackendRegistry([StubBackend("a"), StubBackend("b")])
    lines = startup_summary(settings, registry).splitlines()
    assert (
        "loading: at startup (none); on demand a (idle_unload never), b (idle_unload never)"
        in lines
    )
    assert (
        "  budget: max_loaded_models 1, and each GPU's memory as the loaded models' processes "
        "claim it" in lines
    )
    assert "  loaded together at most: {a}; {b}" in lines


def test_the_one_gpu_example_loads_the_seed_s_three_models_one_at_a_time():
    """examples/one-gpu-three-models.yaml: BLIP-2, JoyCaption and MiniCPM-o on demand, one
    loaded at a time, MiniCPM-o swapped by vLLM's sleep mode."""
    repo = Path(__file__).resolve().parents[2]
    settings = load_settings(settings_model(), repo / "examples" / "one-gpu-three-models.yaml")
    plan = "\n".join(describe_plan(settings))
    assert "loaded together at most: {blip2}; {joycaption}; {minicpm-o}" in plan
    assert [m.backend for m in settings.models] == ["blip2", "transformers", "vllm"]
    assert all(m.load == "on_demand" for m in settings.models)
    assert "--enable-sleep-mode" in plan and "VLLM_SERVER_DEV_MODE=1" in plan
