"""`security.keys:` as the config loader checks it: exactly one of `key` and `sha256`, a
digest that is 64 hex digits, unique names; errors name the entry and the line, never a key."""

from __future__ import annotations

import hashlib

import pytest
import yaml

from vlm_gateway.backends.kinds import settings_model
from vlm_gateway.config.loading import ConfigError, load_settings

SECRET = "sk-never-shown-0123456789"
DIGEST = hashlib.sha256(SECRET.encode()).hexdigest()


def load(tmp_path, keys: list[dict]):
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"security": {"keys": keys}}, sort_keys=False))
    return load_settings(settings_model(), path, environ={})


def refusal(tmp_path, keys: list[dict]) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, keys)
    [reason] = caught.value.reasons
    assert SECRET not in reason
    return reason


def test_a_key_or_its_digest_with_models_limits_and_admin_load(tmp_path):
    settings = load(
        tmp_path,
        [
            {"name": "team-a", "key": SECRET, "models": ["m"], "requests_per_minute": 5},
            {"name": "team-b", "sha256": DIGEST.upper(), "max_in_flight": 2},
            {"name": "ops", "sha256": DIGEST, "admin": True},
        ],
    )
    team_a, team_b, ops = settings.security.keys
    assert team_a.key is not None and team_a.key.get_secret_value() == SECRET
    assert (team_a.models, team_a.requests_per_minute, team_a.max_in_flight) == (["m"], 5, None)
    assert team_b.sha256 == DIGEST  # stored lower-case, as hexdigest() prints it
    assert team_b.models is None and team_b.max_in_flight == 2 and not team_b.admin
    assert ops.admin
    assert SECRET not in repr(settings)


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "team-a"},  # neither
        {"name": "team-a", "key": SECRET, "sha256": DIGEST},  # both
    ],
)
def test_a_key_needs_exactly_one_of_key_and_sha256(tmp_path, entry):
    reason = refusal(tmp_path, [entry])
    assert reason.endswith("security.keys[0]: Value error, give exactly one of `key` and `sha256`")
    assert ":3:" in reason  # the line of the entry in the file


@pytest.mark.parametrize("digest", [DIGEST[:-1], DIGEST + "0", "z" * 64, SECRET])
def test_a_sha256_must_be_64_hex_digits(tmp_path, digest):
    reason = refusal(tmp_path, [{"name": "team-a", "sha256": digest}])
    assert "security.keys[0].sha256" in reason and "64 hex digits" in reason


def test_key_names_must_be_unique(tmp_path):
    keys = [
        {"name": "team-a", "key": SECRET},
        {"name": "team-b", "key": "sk-other"},
        {"name": "team-a", "sha256": DIGEST},
    ]
    assert refusal(tmp_path, keys).endswith(
        "security.keys: Value error, key names must be unique: team-a"
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("requests_per_minute", 0), ("max_in_flight", 0), ("name", "has space"), ("name", "")],
)
def test_limits_are_positive_and_names_are_plain(tmp_path, field, value):
    reason = refusal(tmp_path, [{"name": "team-a", "key": SECRET, field: value}])
    assert f"security.keys[0].{field}" in reason


def test_no_key_may_take_the_name_of_the_owner_of_older_work(tmp_path):
    reason = refusal(tmp_path, [{"name": "anonymous", "key": SECRET}])
    assert "security.keys[0].name" in reason and "before keys had names" in reason
