"""The fake upstream with a gate: it answers the first `answer_first` POSTs as FakeUpstream
does and holds every later one until the test calls release(). A test that kills, stops or
drains a gateway "mid-batch" waits until requests are held here and acts then, so the work is
still running when it acts however fast or slow the machine is (issue 23)."""

from __future__ import annotations

import asyncio

from tests.support.fake_upstream import FakeUpstream


class GatedUpstream(FakeUpstream):
    def __init__(self, answer_first: int, record: bool = False) -> None:
        super().__init__(record=record)
        self.answer_first = answer_first
        self.arrived = 0  # POSTs that reached the dispatch, answered or held
        self.held = 0  # POSTs waiting at the gate now (a killed client's too, until release)
        self._gate = asyncio.Event()  # bound to the fake's loop on its first wait

    async def _dispatch(self, req, chat, http11, keep, reader, writer) -> bool:
        # Counted on the fake's one event loop thread: no lock needed, the test only reads.
        self.arrived += 1
        if self.arrived > self.answer_first and not self._gate.is_set():
            self.held += 1
            try:
                await self._gate.wait()
            finally:
                self.held -= 1
        return await super()._dispatch(req, chat, http11, keep, reader, writer)

    def release(self) -> None:
        """Open the gate for good: the held requests are answered, later ones at once."""
        assert self._loop is not None, "release() before start()"
        self._loop.call_soon_threadsafe(self._gate.set)
