"""Wiring for the door: the one door layer and the media resolver, built from settings."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI

from vlm_gateway.config.security import SecuritySettings
from vlm_gateway.config.settings import GatewaySettings
from vlm_gateway.core.metrics import Metrics
from vlm_gateway.images.fetch import ImageFetcher
from vlm_gateway.images.pool import ImagePreparer
from vlm_gateway.images.resolve import ImageResolver
from vlm_gateway.media.resolve import RequestResolver
from vlm_gateway.server.api_docs import docs_public_paths
from vlm_gateway.server.door.auth import KeyCheck
from vlm_gateway.server.door.door import Door
from vlm_gateway.server.door.keys import KeyRing
from vlm_gateway.server.door.limits import BodyLimit, RateLimiter, SharedUsage
from vlm_gateway.server.door.log_redaction import install_log_redaction


def install_door(
    app: FastAPI,
    settings: GatewaySettings,
    metrics: Metrics,
    shared_usage: SharedUsage | None = None,
) -> None:
    """The door (door.py) around everything the app has so far: added last, so outermost.
    `shared_usage`: the table several worker processes count rate limits in (None: this
    process alone)."""
    security = settings.security
    public_paths = docs_public_paths(security.public_paths)  # /docs/assets/ go with /docs
    # Batch input files have their own, larger limit (batch.max_file_bytes).
    upload_limit = max(security.max_body_bytes, settings.batch.max_file_bytes + 1024 * 1024)
    limiter = None
    if _any_rate_limit(security):
        limiter = RateLimiter(
            requests_per_minute=security.requests_per_minute,
            max_in_flight=security.max_in_flight_per_key,
            public_paths=public_paths,
            shared=shared_usage,
        )
    keys = KeyRing.from_settings(security)
    app.add_middleware(
        Door,
        metrics=metrics,
        routes=app.routes,  # the app's own list: routes included later are seen too
        access_log=settings.access_log,
        server_timing=settings.server_timing,
        keys=KeyCheck(keys, public_paths) if keys else None,
        limiter=limiter,
        body_limit=BodyLimit(security.max_body_bytes, {"/v1/files": upload_limit}),
    )


def _any_rate_limit(security: SecuritySettings) -> bool:
    """The gateway's per-key limits, or any key's own (each adds to the gateway's)."""
    own = any(key.requests_per_minute or key.max_in_flight for key in security.keys)
    return bool(security.requests_per_minute or security.max_in_flight_per_key or own)


@contextlib.asynccontextmanager
async def open_request_resolver(
    settings: GatewaySettings, observer: Metrics | None = None
) -> AsyncIterator[RequestResolver]:
    """The resolver of images, video and audio, its fetcher's own HTTP client (never the
    upstream pool: that one may dial private addresses) and its image preparation pool, for
    the app's lifetime."""
    install_log_redaction()
    fetcher = ImageFetcher(settings.images)
    preparer = ImagePreparer(settings.images.prepare_workers)
    try:
        images = ImageResolver(
            settings.images,
            settings.image_limits,
            fetcher,
            observer,
            preparer,
            takes_images=lambda model: "image" in settings.input_modalities(model),
            digests_for=settings.image_digests,
        )
        media_dir = settings.images.local_media_dir
        yield RequestResolver(
            images,
            settings.model_media,
            fetcher,
            Path(os.path.realpath(media_dir)) if media_dir is not None else None,
            observer,
        )
    finally:
        await preparer.aclose()
        await fetcher.aclose()
