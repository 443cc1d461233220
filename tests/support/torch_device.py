"""Where the tests run the in-process BLIP-2: the CPU here and in CI; `VLMGW_TEST_DEVICE=cuda`
runs the same tests on a GPU machine (float16 by the backend's `dtype: auto`)."""

from __future__ import annotations

import os

TEST_DEVICE = os.environ.get("VLMGW_TEST_DEVICE", "cpu")
