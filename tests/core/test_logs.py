"""The log handler that gathers one event-loop turn's lines into one write, and the formatter's
timestamps."""

from __future__ import annotations

import asyncio
import logging
import threading

from vlm_gateway.core.logs import ACCESS_LOGGER, Timestamps, TurnBufferedStreamHandler


class CountedStream:
    """A stream that keeps each write apart."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> None:
        self.writes.append(text)

    def flush(self) -> None:
        pass


def handler_on(stream: CountedStream) -> tuple[TurnBufferedStreamHandler, logging.Logger]:
    handler = TurnBufferedStreamHandler(stream)
    logger = logging.Logger(ACCESS_LOGGER, logging.INFO)  # its lines are the ones gathered
    logger.addHandler(handler)
    return handler, logger


def test_the_lines_of_one_loop_turn_go_out_in_one_write_in_order():
    stream = CountedStream()
    _, logger = handler_on(stream)

    async def scenario() -> list[str]:
        for n in range(3):
            logger.info("line %d", n)
        written_during_the_turn = list(stream.writes)
        await asyncio.sleep(0)  # the turn ends: the gathered lines go out
        await asyncio.sleep(0)
        return written_during_the_turn

    assert asyncio.run(scenario()) == []
    assert stream.writes == ["line 0\nline 1\nline 2\n"]


def test_any_other_line_goes_out_at_once_with_what_was_gathered_before_it():
    """A refusal's reason is logged before its response, the line before an os._exit (a second
    SIGTERM) before the exit: neither may wait for the loop's turn to end."""
    stream = CountedStream()
    handler, access = handler_on(stream)
    other = logging.Logger("vlm_gateway.cli.supervisor", logging.INFO)
    other.addHandler(handler)

    async def scenario() -> list[str]:
        access.info("gathered")
        other.info("refused: missing API key")
        return list(stream.writes)

    assert "".join(asyncio.run(scenario())) == "gathered\nrefused: missing API key\n"


def test_off_the_loop_a_line_goes_out_at_once_after_what_was_gathered():
    stream = CountedStream()
    handler, logger = handler_on(stream)

    async def scenario() -> None:
        logger.info("on the loop")
        thread = threading.Thread(target=logger.warning, args=("from a thread",))
        thread.start()
        thread.join()

    asyncio.run(scenario())
    assert "".join(stream.writes) == "on the loop\nfrom a thread\n"
    logger.warning("no loop at all")
    assert stream.writes[-1] == "no loop at all\n"


def test_flush_writes_what_is_gathered_when_the_loop_never_turns_again():
    stream = CountedStream()
    handler, logger = handler_on(stream)
    loop = asyncio.new_event_loop()
    loop.call_soon(logger.info, "last words")
    loop.call_soon(loop.stop)  # the loop stops at the end of this turn, before the write
    loop.run_forever()
    loop.close()
    assert stream.writes == []
    handler.flush()  # as logging.shutdown() does at exit
    assert stream.writes == ["last words\n"]


def test_timestamps_are_utc_with_milliseconds():
    record = logging.LogRecord("t", logging.INFO, "", 0, "m", (), None)
    stamp = Timestamps()
    record.created = 1764982800.9996  # 2025-12-06 01:00:00.9996 UTC
    assert stamp(record) == "2025-12-06T01:00:00.999Z"
    record.created += 1.0
    assert stamp(record) == "2025-12-06T01:00:01.999Z"
