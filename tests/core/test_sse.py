import orjson

from vlm_gateway.core.errors import UpstreamError
from vlm_gateway.core.sse import DONE, error_event, frame


def test_frame_is_one_data_line_and_a_blank_line():
    assert frame({"a": 1}) == b'data: {"a":1}\n\n'
    assert DONE == b"data: [DONE]\n\n"


def test_error_event_carries_the_envelope():
    event = error_event(UpstreamError("lost"))
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert orjson.loads(event[6:])["error"]["message"] == "lost"
