"""A custom-code model (trust_remote_code) outside transformers' image-text-to-text mapping,
loaded with `AutoModel` and run through its own `chat(msgs=..., tokenizer=...)` (MiniCPM-V/o's
interface): one answer at a time, in the model thread. torch and transformers are imported here,
and this module only in the model thread.

Sampling maps onto MiniCPM-V 2.6's arguments: temperature 0 is `sampling=False` with
`num_beams=1` (greedy: its own default without sampling is a 3-beam search), a temperature is
`sampling=True` with it and the request's `top_p`, `top_k`; unset leaves the model's own
defaults. `stream=True` is asked for where the request streams and the model may sample
(MiniCPM-V streams only then): its pieces go out as it writes them; otherwise the answer comes
whole, as one piece."""

from __future__ import annotations

import inspect
import threading
from typing import TYPE_CHECKING, Any

import torch

from vlm_gateway.backends.inprocess.batcher import RowResult
from vlm_gateway.backends.inprocess.loading import LOAD_LOCK
from vlm_gateway.backends.inprocess.rowtext import RowText
from vlm_gateway.backends.transformers import quantization
from vlm_gateway.backends.transformers.custom_chat import ChatModel, ChatRow
from vlm_gateway.backends.transformers.generate import resolve_device, resolve_dtype

if TYPE_CHECKING:
    from vlm_gateway.backends.transformers.settings import TransformersBackendSettings


def load(entry: TransformersBackendSettings) -> ChatModel | None:
    """The model loaded for its `chat`; None where `AutoModelForImageTextToText` loads it (its
    config is in transformers' mapping, or its code maps that class). Raises with a readable
    reason when it is neither."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    common: dict[str, Any] = {"revision": entry.revision, "trust_remote_code": True}
    with LOAD_LOCK:  # one load at a time, whatever the kind (inprocess/loading.py)
        config = AutoConfig.from_pretrained(entry.model, **common)
    auto_map = getattr(config, "auto_map", None) or {}
    if (
        config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
        or "AutoModelForImageTextToText" in auto_map
    ):
        return None
    device = resolve_device(entry.device)
    dtype = resolve_dtype(entry.dtype, device)
    model_kwargs = dict(common, dtype=dtype)
    if entry.attn_implementation:
        model_kwargs["attn_implementation"] = entry.attn_implementation
    if entry.quantization:  # placed on the device as it loads
        model_kwargs.update(quantization.load_kwargs(entry.quantization, device, dtype))
    with LOAD_LOCK:  # one load at a time, whatever the kind (inprocess/loading.py)
        tokenizer = AutoTokenizer.from_pretrained(entry.model, **common)
        model = AutoModel.from_pretrained(entry.model, **model_kwargs)
    chat = getattr(model, "chat", None)
    if not callable(chat):
        raise RuntimeError(
            f"{type(model).__name__} is not an image-text-to-text model transformers knows, and "
            "has no chat(msgs=..., tokenizer=...) method to serve it through"
        )
    if not entry.quantization:
        model = model.to(device)
    model.eval()
    arguments = inspect.signature(chat).parameters.values()
    return ChatModel(
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        parameters=model.num_parameters(),  # 4-bit weights counted unpacked
        chat_arguments=frozenset(a.name for a in arguments),
        chat_takes_any=any(a.kind is inspect.Parameter.VAR_KEYWORD for a in arguments),
    )


def generate_rows(
    loaded: ChatModel, rows: list[ChatRow], should_stop: threading.Event | None = None
) -> list[RowResult]:
    """Every row's answer, one `chat` call after another. Blocking."""
    stopping = should_stop or threading.Event()
    results = []
    for row in rows:
        if stopping.is_set():
            raise RuntimeError("the backend is stopping")
        cancelled = row.is_cancelled()
        results.append(RowResult("", "stop", 0) if cancelled else _answer(loaded, row, stopping))
    return results


def _answer(loaded: ChatModel, row: ChatRow, should_stop: threading.Event) -> RowResult:
    kwargs = _chat_kwargs(loaded, row)
    if row.sampling.seed is not None:
        torch.manual_seed(row.sampling.seed)
    pieces: list[str] = []
    # RowText cuts at stop strings and holds back what one might still claim; its "tokens"
    # here are the pieces `chat` gives, by index.
    text = RowText(
        lambda indexes: "".join(pieces[i] for i in indexes), (), 2**31, row.stop, row.on_text
    )
    with torch.inference_mode():
        answer = loaded.model.chat(image=None, msgs=row.msgs, tokenizer=loaded.tokenizer, **kwargs)
        if isinstance(answer, tuple):  # MiniCPM-V 1.0 and 2.0: (answer, context, config)
            answer = answer[0]
        for piece in [answer] if isinstance(answer, str) else answer:
            pieces.append(piece)
            text.add(len(pieces) - 1)
            # A streamed answer left early: MiniCPM-V's own thread finishes it unseen.
            if text.finish is not None or row.is_cancelled() or should_stop.is_set():
                break
    if should_stop.is_set():
        raise RuntimeError("the backend is stopping")
    tokens = loaded.count_tokens("".join(pieces))
    text.close("stop" if text.finish or tokens < row.max_new_tokens else "length")
    return RowResult(text.text, text.finish or "stop", min(tokens, row.max_new_tokens))


def _chat_kwargs(loaded: ChatModel, row: ChatRow) -> dict[str, Any]:
    sampling = row.sampling
    wanted: dict[str, Any] = {"max_new_tokens": row.max_new_tokens}
    if row.system_prompt is not None:
        wanted["system_prompt"] = row.system_prompt
    if sampling.do_sample is False:
        wanted.update(sampling=False, num_beams=1)
    elif sampling.do_sample:
        wanted["sampling"] = True
        for name in ("temperature", "top_p", "top_k"):
            if getattr(sampling, name) is not None:
                wanted[name] = getattr(sampling, name)
    if sampling.repetition_penalty is not None:
        wanted["repetition_penalty"] = sampling.repetition_penalty
    if row.on_text is not None and sampling.do_sample is not False:
        wanted["stream"] = True
    return {name: value for name, value in wanted.items() if loaded.takes(name)}
