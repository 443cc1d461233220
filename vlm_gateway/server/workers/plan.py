"""The settings each side runs with when `serve --workers N` splits the gateway in two.

The supervisor's internal app, the backplane, runs every model as configured (managed vLLM,
in-process BLIP-2) and the batch runner, on 127.0.0.1 only. Workers run the public API with
the same settings except that each model the gateway runs itself becomes one `backend: openai`
upstream pointing at the backplane, so there is one vLLM process and one BLIP-2 copy however
many workers there are. Remote upstreams stay as configured: workers call them directly.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from pydantic import SecretStr

from vlm_gateway.backends.openai_upstream.settings import OpenAIBackendSettings
from vlm_gateway.config.security import SecuritySettings
from vlm_gateway.config.settings import GatewaySettings, ModelEntry
from vlm_gateway.images.settings import ModelImageLimits

BACKPLANE_PREFIX = "/backplane"
# Workers ask often: a model the supervisor restarts is known to be down within a second.
_READINESS_INTERVAL_S = 1.0
# Longer than any backend's own timeout, so the backplane's 504 is the one clients see.
_WORKER_TIMEOUT_MARGIN_S = 5.0


@dataclass(frozen=True)
class BackplaneLink:
    """Where workers reach the backplane, and the key that lets them in."""

    url: str  # http://127.0.0.1:PORT
    token: str

    @staticmethod
    def new_token() -> str:
        return secrets.token_urlsafe(32)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def model_base_url(self, index: int) -> str:
        """The OpenAI base URL of model number `index` (in `model_names()` order)."""
        return f"{self.url}{model_prefix(index)}/v1"


def model_prefix(index: int) -> str:
    # By position, not by name: a model name may hold a "/", a path segment may not.
    return f"{BACKPLANE_PREFIX}/m{index}"


def runs_in_supervisor(entry: ModelEntry) -> bool:
    """Kinds the gateway runs itself (processes, in-process models): one copy, in the
    supervisor. Remote upstreams are called from every worker."""
    return entry.backend != "openai"


def backplane_settings(settings: GatewaySettings, link: BackplaneLink) -> GatewaySettings:
    """The configured settings on loopback, with rate limits off (workers count them in their
    shared table) and the link's token added to the configured keys. Files and batches that
    workers forward carry the caller's own key, so tenancy stays the caller's."""
    security = settings.security
    configured = security.keys or security.api_keys or security.api_keys_file
    keys_update: dict[str, object] = {
        "requests_per_minute": None,
        "max_in_flight_per_key": None,
        "keys": [
            key.model_copy(update={"requests_per_minute": None, "max_in_flight": None})
            for key in security.keys
        ],
    }
    if configured:  # no keys configured: the public API is open, so is the loopback one
        keys_update["api_keys"] = [*security.api_keys, link.token]
    backplane_security = SecuritySettings.model_validate({**security.model_dump(), **keys_update})
    return settings.model_copy(
        # Workers write the access lines; the backplane would log each twice (and every probe).
        update={
            "host": "127.0.0.1",
            "port": link.port,
            "security": backplane_security,
            "access_log": False,
        }
    )


def worker_settings(
    settings: GatewaySettings, link: BackplaneLink, data_dir: str
) -> GatewaySettings:
    """A worker's settings: models the supervisor runs become upstreams at the backplane (one
    per model: the supervisor picks the replica), and a private `data_dir` with an SQLite
    store that stays empty (the Files and Batch API is forwarded to the supervisor, which
    alone owns the store and its runner). A PostgreSQL `batch.store` is the supervisor's
    alone too: a worker on it would run a runner of its own, each taking another
    `concurrency_per_model` rows, beside the one the supervisor runs."""
    needs_token = bool(
        settings.security.keys or settings.security.api_keys or settings.security.api_keys_file
    )
    names = settings.model_names()
    models: list[ModelEntry] = []
    replaced: set[str] = set()
    for entry in settings.models:
        if not runs_in_supervisor(entry):
            models.append(entry)
        elif entry.name not in replaced:
            replaced.add(entry.name)
            api_key = SecretStr(link.token) if needs_token else None
            index = names.index(entry.name)
            models.append(_backplane_upstream(settings, entry, link.model_base_url(index), api_key))
    batch = settings.batch.model_copy(update={"store": "sqlite"})
    return settings.model_copy(update={"models": models, "data_dir": data_dir, "batch": batch})


def _backplane_upstream(
    settings: GatewaySettings, entry: ModelEntry, base_url: str, api_key: SecretStr | None
) -> OpenAIBackendSettings:
    """The upstream a worker calls for `entry`, with the image limits of the model itself
    (its kind's, resize included) so images are checked and shrunk in the workers."""
    limits = entry.image_limits(settings.images)
    images = ModelImageLimits(
        max_images=limits.max_images,
        max_image_bytes=limits.max_bytes,
        max_image_pixels=limits.max_pixels,
        min_image_side=limits.min_side,
        max_image_side=limits.max_side,
        resize=f"{limits.resize[0]}x{limits.resize[1]}" if limits.resize else "none",
    )
    timeout = float(getattr(entry, "timeout", 600.0))
    if entry.load == "on_demand":  # the backplane answers once the model is loaded
        timeout = max(timeout, entry.load_timeout)
    timeout += _WORKER_TIMEOUT_MARGIN_S
    return OpenAIBackendSettings(
        name=entry.name,
        backend="openai",
        base_url=base_url,
        upstream_model=entry.name,
        api_key=api_key,
        timeout=timeout,
        health_interval=_READINESS_INTERVAL_S,
        images=images,
    )
