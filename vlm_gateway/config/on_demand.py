"""The keys of loading on demand (docs/on-demand.md): a model's `load`, `idle_unload`,
`load_timeout` and `load_queue`, and the gateway-wide `max_loaded_models`; their checks and
the words check-config and the start-up lines use for them."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BeforeValidator

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$")
# Keys that only mean something for `load: on_demand`; set on a startup model they are errors.
ON_DEMAND_KEYS = ("idle_unload", "load_timeout", "load_queue")


def parse_idle_unload(value: object) -> object:
    """ "never", a number of seconds, or "<number><s|m|h>" ("90s", "10m", "1.5h") -> seconds
    (a float) or "never"; anything else is handed on for pydantic to refuse."""
    if isinstance(value, str) and value.strip() != "never":
        matched = _DURATION.match(value)
        if matched is None:
            raise ValueError('must be "never", a number of seconds or a duration like "10m"')
        return float(matched.group(1)) * _UNITS[matched.group(2) or "s"]
    return value


# Seconds a model may stay idle before it is unloaded, or "never".
IdleUnload = Annotated[float | Literal["never"], BeforeValidator(parse_idle_unload)]


def describe_seconds(seconds: float | str) -> str:
    """600.0 -> "10m", 90.0 -> "90s", "never" -> "never"."""
    if isinstance(seconds, str):
        return seconds
    for unit, size in (("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def idle_words(idle_unload: float | str) -> str:
    """What happens to the model when it is idle, in words."""
    if idle_unload == "never":
        return "kept loaded while idle (unloaded only to make room)"
    return f"unloaded after {describe_seconds(idle_unload)} idle"


def startup_keys_error(load: str, fields_set: set[str]) -> str | None:
    """Why the on-demand keys set on a startup model are wrong, or None."""
    misplaced = [key for key in ON_DEMAND_KEYS if key in fields_set]
    if load == "on_demand" or not misplaced:
        return None
    return (
        f"{', '.join(misplaced)}: only for `load: on_demand` models (this one loads at startup "
        "and stays loaded); add `load: on_demand` or remove the key"
    )


def loaded_models_error(
    max_loaded: int | None, at_startup: list[str], on_demand: list[str]
) -> str | None:
    """Why `max_loaded_models` cannot hold the models that load at startup (and leave room for
    one on-demand model, if any), or None."""
    if max_loaded is None:
        return None
    room = 1 if on_demand else 0
    if len(at_startup) + room <= max_loaded:
        return None
    held = ", ".join(at_startup) or "none"
    if not on_demand:
        return (
            f"max_loaded_models: {max_loaded}, but {len(at_startup)} models load at startup "
            f"({held})"
        )
    return (
        f"max_loaded_models: {max_loaded} leaves no room for the on-demand models "
        f"({', '.join(on_demand)}): {len(at_startup)} load at startup ({held}); raise it or "
        "give more models `load: on_demand`"
    )
