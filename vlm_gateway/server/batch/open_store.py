"""Build the batch store `batch.store` names: the embedded SQLite store (the default), or the
PostgreSQL store, whose driver (psycopg) comes with the `postgres` extra and is imported only
here, only when a postgresql:// URL is configured."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from vlm_gateway.config.settings import GatewaySettings
from vlm_gateway.server.batch.store import Store
from vlm_gateway.server.batch.store_base import BatchStore


class StoreUnavailableError(RuntimeError):
    """The configured store cannot be used by this installation."""


def build_store(settings: GatewaySettings) -> BatchStore:
    url = settings.batch.store
    if url == "sqlite":
        return Store(settings.data_dir)
    if importlib.util.find_spec("psycopg") is None:
        raise StoreUnavailableError(
            "batch.store is a PostgreSQL URL, but the PostgreSQL driver is not installed: "
            "install the gateway with its 'postgres' extra (pip install 'vlm-gateway[postgres]')."
        )
    from vlm_gateway.server.batch.store_postgres import PostgresStore

    # Uploads are spooled here before they go into the database.
    return PostgresStore(url, Path(settings.data_dir) / "spool")
