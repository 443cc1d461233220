"""The one error shape every client sees: `{"error": {"message", "type", "param", "code"}}`.

Backends and routes raise `GatewayError` subclasses; only the app's exception handlers (and
the SSE writer, for errors after a stream began) turn them into bytes. No FastAPI import here.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class GatewayError(Exception):
    status_code = 500
    error_type = "internal_error"
    default_code: str | None = None
    # Set by a backend when the request failed before the upstream sent an answer's head (a
    # refused or broken connection, a timeout waiting for headers): another replica may be
    # tried (server/failover.py). Never once bytes reached the client.
    retryable = False
    # Set by a backend when this error is the upstream's own answer, a status before any byte
    # reached the client: the model's `failover_on` decides (backends/failover_rule.py).
    upstream_status: int | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        if status_code is not None:
            self.status_code = status_code
        if error_type is not None:
            self.error_type = error_type
        self.headers = headers or {}

    def envelope(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    default_code = "context_length_exceeded"


class InvalidAPIKeyError(GatewayError):
    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(GatewayError):
    """A valid key that may not do this (an admin-only control)."""

    status_code = 403
    error_type = "invalid_request_error"
    default_code = "permission_denied"


class NotFoundError(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"


class ModelNotFoundError(NotFoundError):
    default_code = "model_not_found"

    def __init__(self, model: str, available: list[str]) -> None:
        listing = ", ".join(sorted(available)) or "(none configured)"
        super().__init__(
            f"The model '{model}' does not exist. Available models: {listing}.", param="model"
        )


class ConflictError(GatewayError):
    """The object exists but its state forbids the change (a running batch's input file)."""

    status_code = 409
    error_type = "invalid_request_error"


class ServiceUnavailableError(GatewayError):
    """No ready backend for the model: answered at once, never queued behind a cold start."""

    status_code = 503
    error_type = "service_unavailable"
    default_code = "model_not_ready"


class PayloadTooLargeError(GatewayError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class RateLimitError(GatewayError):
    status_code = 429
    error_type = "rate_limit_exceeded"
    default_code = "rate_limit_exceeded"


class UpstreamError(GatewayError):
    """The upstream refused the connection, broke it, or answered something unusable."""

    status_code = 502
    error_type = "upstream_error"
    default_code = "bad_gateway"


class UpstreamTimeoutError(GatewayError):
    status_code = 504
    error_type = "upstream_error"
    default_code = "upstream_timeout"


Loc = tuple[str | int, ...]  # where pydantic found an error: keys and list indexes


def validation_error_to_gateway(exc: ValidationError, prefix: Loc = ()) -> InvalidRequestError:
    """Turn pydantic's first telling error into a 400 whose `param` names the field, OpenAI
    style."""
    first = _telling(exc.errors(include_url=False))
    loc = prefix + tuple(first.get("loc", ()))
    param = loc_to_param(loc)
    if first.get("type") == "json_invalid":
        return InvalidRequestError(
            "The request body is not valid JSON: " + first.get("msg", ""), param=None
        )
    message = first.get("msg", "Invalid value")
    if first.get("type") == "missing":
        message = f"Missing required parameter: '{param}'."
    elif first.get("type") == "union_tag_invalid":
        # An unknown content part (or message) type: name the field and what is accepted.
        context = first.get("ctx") or {}
        field = str(context.get("discriminator", "'type'")).strip("'")
        param = f"{param}.{field}" if param else field
        message = (
            f"Invalid value for '{param}': {context.get('tag')!r} is not a supported type; "
            f"the supported types are {context.get('expected_tags')}."
        )
    elif param:
        message = f"Invalid value for '{param}': {message}."
    return InvalidRequestError(message, param=param or None)


def _telling(errors: list[Any]) -> Any:
    """The first error, unless it only says the input is not a union's other member (`content`
    sent as a list reports "Input should be a valid string" for the string member first): then
    the first error from the member the input is."""
    for error in errors:
        loc = error.get("loc", ())
        member = str(loc[-1]) if loc else ""
        is_member = member in _TYPE_LABELS or "[" in member
        if not (is_member and error.get("type", "").endswith("_type")):
            return error
    return errors[0]  # the input is none of the members: the first one says so


# Labels pydantic puts in error locations that are not field names: the tag of a
# discriminated-union member (right after a list index) and the member type of a plain union.
_UNION_TAGS = frozenset(
    {"system", "developer", "user", "assistant", "tool", "text", "image_url"}
    | {"video_url", "input_audio", "audio_url", "file"}
    # The Responses API's and Anthropic's content parts.
    | {"input_text", "input_image", "input_file", "output_text", "image"}
)
_TYPE_LABELS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def loc_to_param(loc: Loc) -> str:
    """('messages', 0, 'user', 'content') -> 'messages[0].content'."""
    parts: list[str] = []
    previous: object = None
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            label = str(item)
            is_tag = isinstance(previous, int) and label in _UNION_TAGS
            is_type = parts and (label in _TYPE_LABELS or "[" in label or "-" in label)
            if not (is_tag or is_type):
                parts.append(("." if parts else "") + label)
        previous = item
    return "".join(parts)


# Anthropic's error types (their Messages API's meanings) for our statuses. Their 529
# ("overloaded") is what our 503 means: this model cannot take the request now, retry later.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}
_ANTHROPIC_STATUS = {503: 529}


def anthropic_error(error: GatewayError) -> tuple[int, dict[str, Any]]:
    """The same error as Anthropic's API words it: its status and
    `{"type": "error", "error": {"type", "message"}}` (the field, if any, is in the message)."""
    status = error.status_code
    message = error.message
    if error.param and error.param not in message:
        message = f"{error.param}: {message}"
    body = {
        "type": "error",
        "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message},
    }
    return _ANTHROPIC_STATUS.get(status, status), body
