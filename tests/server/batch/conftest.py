"""The throwaway PostgreSQL cluster (tests/support/postgres.py), one per session, started only
when a test asks for it. Without its binaries the tests that need it skip here and fail under
CI, where scripts/test.sh installs them."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.postgres import PostgresCluster, find_binaries


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    binaries = find_binaries()
    if binaries is None:
        message = "PostgreSQL (initdb, pg_ctl) is not installed; scripts/test.sh installs it"
        if os.environ.get("CI"):  # never skip this in CI
            pytest.fail(message)
        pytest.skip(message)
    pytest.importorskip("psycopg", reason="the 'postgres' extra (psycopg) is not installed")
    cluster = PostgresCluster(*binaries).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """A fresh, empty database on the session's cluster."""
    return postgres_cluster.new_database()
