"""A Responses API request as a chat request (docs/api.md has the field table).

`instructions` becomes a leading system message, `input` the messages (a string: one user
message), `input_text` / `input_image` parts the chat text / image_url parts, and
`max_output_tokens` the chat `max_completion_tokens`. What the gateway cannot honour is a 400
naming the field, never silently dropped: it keeps no responses (no `store`, no
`previous_response_id`), runs no tools and no reasoning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vlm_gateway.core.errors import InvalidRequestError
from vlm_gateway.core.protocol import ChatCompletionRequest
from vlm_gateway.core.responses_protocol import (
    InputFile,
    InputImage,
    InputMessage,
    ResponseCreateRequest,
)
from vlm_gateway.server.chat_bridge import Translated

_NO_STORAGE = (
    "This gateway stores no responses: send the whole conversation in 'input' (and leave "
    "'store' out or false)."
)


def to_chat(body: ResponseCreateRequest) -> Translated:
    refuse_unsupported(body)
    messages: list[dict[str, Any]] = []
    if body.instructions:
        messages.append({"role": "system", "content": body.instructions})
    renames = {"messages": "input"}
    if isinstance(body.input, str):
        messages.append({"role": "user", "content": body.input})
    else:
        for k, item in enumerate(body.input):
            chat_index = len(messages)
            messages.append(_message(item, f"input[{k}]"))
            for j, part in enumerate(item.content if isinstance(item.content, list) else []):
                if isinstance(part, InputImage):
                    chat_param = f"messages[{chat_index}].content[{j}].image_url.url"
                    renames[chat_param] = f"input[{k}].content[{j}].image_url"
                elif isinstance(part, InputFile):  # its video or audio part's errors
                    renames[f"messages[{chat_index}].content[{j}]"] = f"input[{k}].content[{j}]"
    fields: dict[str, Any] = {
        "model": body.model,
        "messages": messages,
        "max_completion_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "stream": body.stream,
        "user": body.user,
    }
    chat = ChatCompletionRequest.model_validate({k: v for k, v in fields.items() if v is not None})
    return Translated(chat, renames)


def _message(item: InputMessage, param: str) -> dict[str, Any]:
    role = "system" if item.role == "developer" else item.role
    if isinstance(item.content, str):
        return {"role": role, "content": item.content}
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(item.content):
        where = f"{param}.content[{j}]"
        if isinstance(part, InputImage):
            if item.role != "user":
                raise InvalidRequestError(
                    f"Images are accepted in user messages only; {param} is a {item.role} message.",
                    param=where,
                )
            parts.append({"type": "image_url", "image_url": _image_url(part, where)})
        elif isinstance(part, InputFile):
            parts.append({"type": "file", "file": _file(part, where)})
        else:
            parts.append({"type": "text", "text": part.text})  # input_text or output_text
    return {"role": role, "content": parts}


def _image_url(part: InputImage, where: str) -> dict[str, str]:
    if part.file_id is not None:
        raise InvalidRequestError(
            "Images by 'file_id' are not supported by this gateway (it keeps no files for "
            "images); send 'image_url' as a data: URL or an http(s) URL.",
            param=f"{where}.file_id",
        )
    if not part.image_url:
        raise InvalidRequestError(
            "Missing required parameter: 'image_url' (a data: URL or an http(s) URL).",
            param=f"{where}.image_url",
        )
    return {"url": part.image_url, "detail": part.detail}


def _file(part: InputFile, where: str) -> dict[str, str]:
    if part.file_data is None:
        field = "file_id" if part.file_id is not None else "file_url"
        raise InvalidRequestError(
            f"Files by '{field}' are not supported by this gateway (it keeps and fetches no "
            "files for input_file parts); send 'file_data' as a data: URL of a video or audio "
            "file.",
            param=f"{where}.{field}",
        )
    named = {"filename": part.filename} if part.filename else {}
    return {"file_data": part.file_data, **named}


# field -> (is it set to something the gateway cannot honour?, why not)
_REFUSALS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "store": (lambda v: v is True, _NO_STORAGE),
    "previous_response_id": (lambda v: v is not None, _NO_STORAGE),
    "conversation": (lambda v: v is not None, _NO_STORAGE),
    "background": (lambda v: v is True, "Background responses need storage: " + _NO_STORAGE),
    "tools": (lambda v: bool(v), "Tools are not supported by this gateway."),
    "tool_choice": (
        lambda v: v not in (None, "none", "auto"),
        "Tools are not supported by this gateway: 'tool_choice' may only be 'none' or 'auto'.",
    ),
    "reasoning": (lambda v: bool(v), "Reasoning options are not supported by this gateway."),
    "include": (lambda v: bool(v), "'include' is not supported by this gateway."),
    "prompt": (lambda v: v is not None, "Stored prompts are not supported by this gateway."),
    "top_logprobs": (lambda v: bool(v), "Log probabilities are not supported on /v1/responses."),
    "context_management": (lambda v: bool(v), "Context management is not supported."),
    "truncation": (
        lambda v: v == "auto",
        "'truncation: auto' is not supported: the gateway never drops input items; use 'disabled'.",
    ),
}


def refuse_unsupported(body: ResponseCreateRequest) -> None:
    """A 400 naming the first field set to something the gateway cannot honour."""
    for name, (refused, why) in _REFUSALS.items():
        if refused(getattr(body, name)):
            raise InvalidRequestError(why, param=name)
    text = body.text
    if text is not None and text.format is not None and text.format.type != "text":
        raise InvalidRequestError(
            "Only plain text output is supported: 'text.format.type' must be 'text'.",
            param="text.format.type",
        )
    if text is not None and text.verbosity is not None:
        raise InvalidRequestError(
            "'text.verbosity' is not supported by this gateway.", param="text.verbosity"
        )
