"""The key ring as the batch runner uses it: who a stored owner's name stands for."""

from __future__ import annotations

from vlm_gateway.config.security import SecuritySettings
from vlm_gateway.server.door.keys import KeyRing


def test_caller_named_is_the_configured_key_or_one_that_may_call_nothing():
    ring = KeyRing.from_settings(
        SecuritySettings(keys=[{"name": "alice", "key": "sk-alice", "models": ["m"]}])
    )
    alice = ring.caller_named("alice")
    assert alice.may_call("m") and not alice.may_call("other")
    # Removed from the config: fails closed.
    gone = ring.caller_named("bob")
    assert gone.name == "bob" and not gone.may_call("m")


def test_work_accepted_before_keys_had_names_keeps_every_model():
    ring = KeyRing.from_settings(SecuritySettings(keys=[{"name": "alice", "key": "sk-alice"}]))
    legacy = ring.caller_named("anonymous")
    assert legacy.may_call("m") and not legacy.admin


def test_without_keys_every_owner_may_call_every_model():
    owner = KeyRing.from_settings(SecuritySettings()).caller_named("anonymous")
    assert owner.name == "anonymous" and owner.may_call("m") and not owner.admin
