"""Video and audio errors: 400s in the OpenAI envelope, each naming the part (`param`) and
coded by modality (`invalid_video`, `audio_too_long`, ...), in our own words: never a
decoder's message, which may quote bytes of the file."""

from __future__ import annotations

from vlm_gateway.core.errors import InvalidRequestError


class MediaError(InvalidRequestError):
    default_code = "invalid_media"


def media_error(modality: str, problem: str, message: str, param: str | None = None) -> MediaError:
    """A 400 coded `<problem>` with the modality in it: `invalid` -> `invalid_video`,
    `too_large` -> `video_too_large`, `too_many` -> `too_many_video_parts`."""
    if problem == "invalid":
        code = f"invalid_{modality}"
    elif problem == "too_many":
        code = f"too_many_{modality}_parts"
    else:
        code = f"{modality}_{problem}"
    return MediaError(message, param=param, code=code)
