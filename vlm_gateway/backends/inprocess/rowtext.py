"""A generated row's tokens and text as they arrive, one token at a time: end-of-sequence and
stop strings finish it, new text goes to its `on_text` as soon as it is safe to send (text a
stop string might still claim is held back), and its result is what the engine delivers.

Shared by every in-process kind's generation; pure Python (the kind supplies `decode`)."""

from __future__ import annotations

from collections.abc import Callable, Collection

from vlm_gateway.backends.inprocess.batcher import RowResult


class RowText:
    """A row's generated tokens and text: stop strings cut it, held-back text is never sent."""

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        eos_token_ids: Collection[int],
        max_new_tokens: int,
        stop: tuple[str, ...] = (),
        on_text: Callable[[str], None] | None = None,
        *,
        strip_leading_space: bool = False,
    ) -> None:
        self.decode, self.eos_token_ids = decode, eos_token_ids
        self.max_new_tokens, self.stop, self.on_text = max_new_tokens, stop, on_text
        self.strip_leading_space = strip_leading_space
        self.tokens: list[int] = []
        self.sent = 0
        self.text = ""
        self.finish: str | None = None
        self.generated = 0
        self._hold = max((len(s) for s in stop), default=1) - 1
        self._needs_text = bool(stop) or on_text is not None

    def add(self, token: int) -> None:
        self.generated += 1
        if token in self.eos_token_ids:
            self._finish("stop")
            return
        self.tokens.append(token)
        if self._needs_text:
            self._refresh()
            if self.finish:
                return
            self._emit(self._safe_end())
        if self.finish is None and len(self.tokens) >= self.max_new_tokens:
            self._finish("length")

    def _decoded(self) -> str:
        text = self.decode(self.tokens)
        return text.lstrip() if self.strip_leading_space else text

    def _refresh(self) -> None:
        self.text = self._decoded()
        hits = [
            i
            for i in (self.text.find(s, max(0, self.sent - self._hold)) for s in self.stop)
            if i >= 0
        ]
        if hits:
            self.text = self.text[: min(hits)]
            self._finish("stop", text_is_final=True)

    def _safe_end(self) -> int:
        end = len(self.text) - self._hold
        # An incomplete multi-byte character decodes to U+FFFD until its last byte arrives.
        while end > self.sent and self.text[end - 1] == "\ufffd":
            end -= 1
        return end

    def _emit(self, end: int) -> None:
        if end > self.sent:
            if self.on_text is not None:
                self.on_text(self.text[self.sent : end])
            self.sent = end

    def _finish(self, reason: str, text_is_final: bool = False) -> None:
        if not text_is_final:
            self.text = self._decoded()
        self.finish = reason
        self._emit(len(self.text))

    def close(self, reason: str) -> None:
        """The generation ended without this row finishing on its own (a model's own loop
        stopped it): finish with `reason`, sending what was held back."""
        if self.finish is None:
            self._finish(reason)

    def result(self) -> RowResult:
        # The EOS token or the token that completed a stop string counts as generated, as
        # OpenAI and vLLM count it.
        return RowResult(self.text, self.finish or "length", self.generated)
