"""The app's typed state: there once the lifespan has started, a clear error before."""

from __future__ import annotations

import asyncio

import pytest

from vlm_gateway.backends.kinds import settings_model
from vlm_gateway.server.app import create_app
from vlm_gateway.server.state import GatewayState, state_of


def test_state_exists_only_while_the_app_runs(tmp_path):
    settings = settings_model().model_validate(
        {
            "data_dir": str(tmp_path),
            "models": [{"name": "m", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"}],
        }
    )
    app = create_app(settings)
    with pytest.raises(RuntimeError, match="not started"):
        state_of(app)

    async def run() -> GatewayState:
        async with app.router.lifespan_context(app):
            return state_of(app)

    state = asyncio.run(run())
    assert state.settings is settings
    assert state.registry.names() == ["m"]
    assert state.batch_store is not None and state.batch_runner is not None
