"""Config: YAML + ${VAR} + VLMGW_* + flags, and errors that name the key and its line."""

import textwrap

import pytest

from vlm_gateway.backends.kinds import settings_model
from vlm_gateway.config.loading import ConfigError, load_settings


def write(tmp_path, text):
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(text))
    return path


CONTRACT = """\
    models:
      - name: llava
        backend: openai
        base_url: http://127.0.0.1:8001/v1
        upstream_model: some/model-id
        api_key: ${UPSTREAM_KEY}
    """


def test_contract_example_loads_with_variables_expanded(tmp_path):
    settings = load_settings(
        settings_model(), write(tmp_path, CONTRACT), environ={"UPSTREAM_KEY": "sk-1"}
    )
    (entry,) = settings.models
    assert entry.base_url == "http://127.0.0.1:8001/v1"
    assert entry.api_key.get_secret_value() == "sk-1"
    assert "sk-1" not in repr(settings)


def test_missing_variable_names_it_and_the_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(settings_model(), write(tmp_path, CONTRACT), environ={})
    assert info.value.reasons == [
        f"{tmp_path}/gateway.yaml:6: environment variable ${{UPSTREAM_KEY}} is not set"
    ]


def test_expanded_unquoted_scalars_get_their_type(tmp_path):
    path = write(tmp_path, "port: ${PORT}\nhost: '${HOST}'\n")
    settings = load_settings(settings_model(), path, environ={"PORT": "9001", "HOST": "127.0.0.2"})
    assert (settings.port, settings.host) == (9001, "127.0.0.2")


def test_unknown_and_bad_keys_are_reported_with_lines(tmp_path):
    path = write(
        tmp_path,
        """\
        port: 80000
        models:
          - name: a
            backend: openai
            base_url: ftp://x
            tiemout: 3
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_settings(settings_model(), path, environ={})
    reasons = "\n".join(info.value.reasons)
    assert f"{path}:1: port:" in reasons
    assert f"{path}:5: models[0].base_url: Value error, must start with http" in reasons
    assert f"{path}:6: models[0].tiemout: unknown key" in reasons


def test_unknown_backend_kind_is_reported(tmp_path):
    path = write(tmp_path, "models:\n  - name: a\n    backend: nosuch\n")
    with pytest.raises(ConfigError) as info:
        load_settings(settings_model(), path, environ={})
    assert f"{path}:2: models[0]" in info.value.reasons[0]


def test_env_then_flags_override_the_file(tmp_path):
    path = write(tmp_path, "port: 1000\nhost: 127.0.0.1\n")
    env = {"VLMGW_PORT": "2000", "VLMGW_HOST": "127.0.0.3"}
    settings = load_settings(
        settings_model(), path, overrides={"port": 3000, "host": None}, environ=env
    )
    assert (settings.port, settings.host) == (3000, "127.0.0.3")


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(settings_model(), write(tmp_path, "models: [\n"), environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(settings_model(), tmp_path / "absent.yaml", environ={})


def test_replicas_share_a_name(tmp_path):
    path = write(
        tmp_path,
        """\
        models:
          - {name: m, backend: openai, base_url: "http://127.0.0.1:1/v1"}
          - {name: m, backend: openai, base_url: "http://127.0.0.1:2/v1"}
        """,
    )
    settings = load_settings(settings_model(), path, environ={})
    assert settings.model_names() == ["m"] and len(settings.entries_for("m")) == 2


def test_failover_on_takes_server_errors_only_and_says_why(tmp_path):
    text = """\
        models:
          - name: m
            backend: openai
            base_url: http://127.0.0.1:8001/v1
            failover_on: [500, 429, 404]
        """
    with pytest.raises(ConfigError) as info:
        load_settings(settings_model(), write(tmp_path, text))
    (reason,) = info.value.reasons
    assert reason.startswith(f"{tmp_path}/gateway.yaml:5: models[0].failover_on")
    assert "only 5xx statuses can be failed over, not [429, 404]" in reason
    assert "the request's own fault" in reason
