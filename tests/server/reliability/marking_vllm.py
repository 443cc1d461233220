"""tests/support/fake_vllm.py that, on SIGTERM, writes when it got it (time.time_ns()) to the
file $FAKE_VLLM_STOP_MARK and exits: the drain tests read the order of events from it.

    python -m tests.server.reliability.marking_vllm serve MODEL --served-model-name N --port P
"""

from __future__ import annotations

import os
import signal
import sys
import time
from types import FrameType

from tests.support import fake_vllm


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    with open(os.environ["FAKE_VLLM_STOP_MARK"], "w") as mark:
        mark.write(str(time.time_ns()))
    os._exit(0)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _on_sigterm)
    sys.exit(fake_vllm.main(sys.argv[1:]))
