"""What each side of `serve --workers N` runs: the backplane keeps the models, workers get
upstreams pointing at it (pure settings, no processes)."""

from __future__ import annotations

import pytest

from vlm_gateway.backends.kinds import settings_model
from vlm_gateway.cli.supervisor import parse_workers
from vlm_gateway.server.workers.plan import BackplaneLink, backplane_settings, worker_settings

LINK = BackplaneLink("http://127.0.0.1:4567", "t0ken")


def _settings(**extra):
    models = [
        {"name": "remote", "backend": "openai", "base_url": "http://10.0.0.1:8000/v1"},
        {"name": "v", "backend": "vllm", "model": "org/m", "replicas": 2, "timeout": 30},
        {"name": "v", "backend": "vllm", "model": "org/m", "port": 9100},
        {"name": "b", "backend": "blip2", "model": "org/blip2", "images": {"resize": "64x48"}},
    ]
    return settings_model().model_validate({"models": models, **extra})


def test_models_the_supervisor_runs_become_one_upstream_each_at_the_backplane():
    workers = worker_settings(_settings(), LINK, "/tmp/w0")
    by_name = {entry.name: entry for entry in workers.models}
    assert [entry.name for entry in workers.models] == ["remote", "v", "b"]
    assert by_name["remote"].base_url == "http://10.0.0.1:8000/v1"  # called directly
    assert by_name["v"].backend == "openai"
    assert by_name["v"].base_url == "http://127.0.0.1:4567/backplane/m1/v1"
    assert by_name["v"].timeout == 35  # past the backplane's own 504
    assert by_name["b"].base_url == "http://127.0.0.1:4567/backplane/m2/v1"
    assert by_name["b"].upstream_model == "b"
    assert by_name["b"].api_key is None  # no keys configured: nothing to present
    # The model's own image limits (BLIP-2: one image, its resize), checked in the workers.
    limits = workers.image_limits("b")
    assert (limits.max_images, limits.resize) == (1, (64, 48))
    assert workers.data_dir == "/tmp/w0"


def test_a_worker_waits_for_an_on_demand_model_as_long_as_its_load_timeout():
    models = [
        {"name": "v", "backend": "vllm", "model": "org/m", "timeout": 30},
        {"name": "w", "backend": "vllm", "model": "org/m", "load": "on_demand", "timeout": 30,
         "load_timeout": 900},
    ]  # fmt: skip
    workers = worker_settings(settings_model().model_validate({"models": models}), LINK, "/w")
    timeouts = {entry.name: entry.timeout for entry in workers.models}
    assert timeouts == {"v": 35, "w": 905}  # past the backplane's own 503 `load_timeout`
    assert all(entry.load == "startup" for entry in workers.models)  # the supervisor loads


def test_a_postgresql_batch_store_is_the_supervisors_alone():
    pg = "postgresql://gw@db.internal/batches"
    settings = _settings(batch={"store": pg, "concurrency_per_model": 3})
    assert backplane_settings(settings, LINK).batch.store == pg
    workers = worker_settings(settings, LINK, "/tmp/w0").batch
    assert (workers.store, workers.concurrency_per_model) == ("sqlite", 3)


def test_with_keys_the_backplane_takes_the_token_and_drops_the_rate_limits():
    keys = {
        "keys": [{"name": "a", "key": "ka", "requests_per_minute": 3, "max_in_flight": 2}],
        "requests_per_minute": 10,
        "max_in_flight_per_key": 4,
    }
    settings = _settings(security=keys)
    backplane = backplane_settings(settings, LINK)
    assert (backplane.host, backplane.port) == ("127.0.0.1", 4567)
    security = backplane.security
    assert security.requests_per_minute is None and security.max_in_flight_per_key is None
    assert security.keys[0].requests_per_minute is None and security.keys[0].max_in_flight is None
    assert security.keys[0].key.get_secret_value() == "ka"  # forwarded files stay a's
    assert [key.get_secret_value() for key in security.api_keys] == ["t0ken"]
    assert [entry.backend for entry in backplane.models] == ["openai", "vllm", "vllm", "blip2"]
    upstream = {e.name: e for e in worker_settings(settings, LINK, "/tmp/w").models}["v"]
    assert upstream.api_key.get_secret_value() == "t0ken"


@pytest.mark.parametrize(("given", "count"), [("1", 1), ("3", 3)])
def test_workers_is_a_count(given, count):
    assert parse_workers(given) == count


def test_workers_auto_is_one_per_usable_core():
    import os

    assert parse_workers("auto") == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("given", ["0", "-2", "two", ""])
def test_workers_refuses_anything_else(given):
    with pytest.raises(ValueError, match="whole number >= 1 or 'auto'"):
        parse_workers(given)


def test_serve_refuses_a_bad_worker_count_before_starting_anything(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "g.yaml"
    config.write_text("models: [{name: m, backend: openai, base_url: 'http://127.0.0.1:9/v1'}]\n")
    argv = [sys.executable, "-m", "vlm_gateway", "serve", "-c", str(config), "--workers", "many"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--workers takes a whole number >= 1 or 'auto', not 'many'" in done.stderr
