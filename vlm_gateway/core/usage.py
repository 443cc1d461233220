"""Token counts from an OpenAI `usage` object, read one way for the metrics and the logs."""

from __future__ import annotations

from collections.abc import Mapping

TOKEN_FIELDS = ("prompt_tokens", "completion_tokens")
# The same two counts as the Responses API and Anthropic's Messages API name them.
_OTHER_NAMES = {"prompt_tokens": "input_tokens", "completion_tokens": "output_tokens"}


def token_counts(usage: object) -> dict[str, int]:
    """The counts among `prompt_tokens` and `completion_tokens` (or `input_tokens` and
    `output_tokens`) that are whole numbers >= 0;
    `{}` when `usage` is not an object (absent, null, or an upstream's odd shape)."""
    if not isinstance(usage, Mapping):
        return {}
    counts: dict[str, int] = {}
    for field in TOKEN_FIELDS:
        value = usage.get(field)
        if value is None:
            value = usage.get(_OTHER_NAMES[field])
        # bool is an int to Python, never a count to us.
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            counts[field] = value
    return counts
