"""The video and audio parts of a chat request: finding them, the `file` parts that become
them, and what each one is (its modality, its URL or data)."""

from __future__ import annotations

from dataclasses import dataclass

from vlm_gateway.core.errors import InvalidRequestError
from vlm_gateway.core.protocol import (
    AudioURL,
    ChatCompletionContentPartAudio,
    ChatCompletionContentPartFile,
    ChatCompletionContentPartImage,
    ChatCompletionContentPartInputAudio,
    ChatCompletionContentPartVideo,
    ChatCompletionRequest,
    MediaPart,
    VideoURL,
)
from vlm_gateway.media.settings import Modality

PART_MODALITY: dict[type, Modality] = {
    ChatCompletionContentPartVideo: "video",
    ChatCompletionContentPartAudio: "audio",
    ChatCompletionContentPartInputAudio: "audio",
}


@dataclass
class FoundPart:
    param: str  # "messages[0].content[1]"
    part: MediaPart
    modality: Modality


def media_parts(request: ChatCompletionRequest) -> list[FoundPart]:
    """Every video and audio part, in order."""
    found = []
    for i, message in enumerate(request.messages):
        content = getattr(message, "content", None)
        for j, part in enumerate(content if isinstance(content, list) else ()):
            modality = PART_MODALITY.get(type(part))
            if modality is not None:
                found.append(FoundPart(f"messages[{i}].content[{j}]", part, modality))
    return found


def modalities_asked(request: ChatCompletionRequest) -> dict[str, str]:
    """modality -> the param of its first part, for every modality but text the request uses."""
    asked: dict[str, str] = {}
    for i, message in enumerate(request.messages):
        content = getattr(message, "content", None)
        for j, part in enumerate(content if isinstance(content, list) else ()):
            if isinstance(part, ChatCompletionContentPartImage):
                asked.setdefault("image", f"messages[{i}].content[{j}]")
            modality = PART_MODALITY.get(type(part))
            if modality is not None:
                asked.setdefault(modality, f"messages[{i}].content[{j}]")
    return asked


def map_file_parts(request: ChatCompletionRequest) -> None:
    """OpenAI's `file` parts holding video/* or audio/* data become `video_url` / `audio_url`
    parts (the model's server has no `file` part); any other file is a 400 naming it."""
    for i, message in enumerate(request.messages):
        content = getattr(message, "content", None)
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if isinstance(part, ChatCompletionContentPartFile):
                content[j] = _media_part_of(part, f"messages[{i}].content[{j}].file")


def _media_part_of(part: ChatCompletionContentPartFile, param: str) -> MediaPart:
    data = part.file.file_data
    if data is None:
        raise InvalidRequestError(
            "File parts must carry their bytes in `file_data` (a data: URL): this gateway "
            "keeps no files for chat requests (`file_id` is for the Batch API).",
            param=param,
            code="unsupported_file",
        )
    media_type = data[5 : data.find(";")].lower() if data[:5].lower() == "data:" else ""
    if media_type.startswith("video/"):
        return ChatCompletionContentPartVideo(type="video_url", video_url=VideoURL(url=data))
    if media_type.startswith("audio/"):
        return ChatCompletionContentPartAudio(type="audio_url", audio_url=AudioURL(url=data))
    named = f"'{media_type}'" if media_type else "not a data: URL"
    raise InvalidRequestError(
        f"The file in {param} is {named}: file parts may hold video/* or audio/* data (send "
        "images as image_url parts; documents are not taken).",
        param=param,
        code="unsupported_file_type",
    )
