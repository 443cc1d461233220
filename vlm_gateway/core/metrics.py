"""The gateway's Prometheus metrics: one `Metrics` object per app, on its own registry.

The app factory builds it and hands it to whatever observes traffic (the request middleware,
the route helpers, the image resolver, the batch runner); nothing here is a module-level
default-registry singleton, so two apps in one process never share a series. What is live
state rather than a count (requests in flight, replica states, vLLM restarts, batches by
status, vLLM's own series) is read at scrape time by collectors the server hands to `render`.

Multiprocess: when `PROMETHEUS_MULTIPROC_DIR` is set before prometheus_client is imported,
its counters and histograms keep their values in files in that directory, one per process,
and `render` reads them all through `MultiProcessCollector`, so several worker processes can
answer one scrape with the sum of their counts (docs/operations.md, "Metrics").

Label values stay bounded: a model label is a configured model name or "" (a client naming
any model cannot add series), a route label is the route's template, never the raw path, and a
key label is the name of a configured API key (or `anonymous`), never anything a client wrote.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from vlm_gateway.core.image_errors import (
    BlockedImageURLError,
    ImageTooLargeError,
    TooManyImagesError,
)
from vlm_gateway.core.usage import token_counts

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # the text format every Prometheus 2.x reads
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Refusal reasons (`vlmgw_refusals_total{reason}`): policy said no, before any model ran.
AUTH = "auth"
RATE_LIMIT = "rate_limit"
BODY_SIZE = "body_size"
IMAGE_LIMITS = "image_limits"
MEDIA_LIMITS = "media_limits"
SSRF = "ssrf"
_IMAGE_REFUSALS = {
    BlockedImageURLError.default_code: SSRF,
    TooManyImagesError.default_code: IMAGE_LIMITS,
    ImageTooLargeError.default_code: IMAGE_LIMITS,
}


def _media_refusal(code: str) -> str | None:
    if code.endswith("_url_blocked"):
        return SSRF
    if code.endswith(("_too_large", "_too_long")) or code.startswith("too_many_"):
        return MEDIA_LIMITS
    return None


# Vision requests run from milliseconds (a refusal) to minutes (a long generation).
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_IMAGE_BYTES_BUCKETS = tuple(4096 * 4**i for i in range(9))  # 4 KiB .. 256 MiB
_FETCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_DECODE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
# Loads on demand: an in-process model in seconds, a vLLM cold start in minutes.
_LOAD_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    """Every counter and histogram the gateway keeps, and the one exposition of them."""

    def __init__(self, models: Iterable[str], multiprocess_dir: str | None = None) -> None:
        self._models = frozenset(models)
        # The labelled children requests count into, looked up once per label set: `labels()`
        # checks and stringifies its values and takes a lock every time (issue 23). Bounded
        # as the label values are.
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self.registry = CollectorRegistry()
        self._source: Collector = self.registry
        if multiprocess_dir:
            # Every process's files, summed; prometheus_client leaves this class unannotated.
            self._source = MultiProcessCollector(None, multiprocess_dir)  # type: ignore[no-untyped-call]
        self._define_requests()
        self._define_images()
        self._refusals = self._counter(
            "vlmgw_refusals_total", "Requests refused by policy.", "reason", "model"
        )
        self._batch_requests = self._counter(
            "vlmgw_batch_requests_total",
            "Batch requests finished, by outcome (completed or failed).",
            "model",
            "outcome",
        )

        self._failovers = self._counter(
            "vlmgw_failovers_total",
            "Requests that failed before any answer and were tried on another replica, by "
            "outcome of the retry (served, failed).",
            "model",
            "outcome",
        )
        self._ejections = self._counter(
            "vlmgw_replica_ejections_total",
            "Replicas taken out of rotation by outlier ejection.",
            "model",
            "replica",
        )
        self._define_on_demand()

    @classmethod
    def from_environment(cls, models: Iterable[str]) -> Metrics:
        """Multiprocess mode exactly when prometheus_client itself chose it (at its import)."""
        return cls(models, os.environ.get(MULTIPROCESS_ENV) or None)

    def _define_requests(self) -> None:
        request = ("route", "method", "model", "replica")
        self._requests = self._counter(
            "vlmgw_requests_total", "HTTP requests answered.", *request, "status", "key"
        )
        self._duration = self._histogram(
            "vlmgw_request_duration_seconds",
            "From the request's arrival to the end of its response (the whole stream).",
            _DURATION_BUCKETS,
            *request,
        )
        self._ttft = self._histogram(
            "vlmgw_time_to_first_token_seconds",
            "Streams: from the request's arrival to its first event.",
            _TTFT_BUCKETS,
            "route",
            "model",
            "replica",
        )
        self._prompt_tokens = self._counter(
            "vlmgw_prompt_tokens_total",
            "Prompt tokens, from responses' usage.",
            "model",
            "replica",
            "key",
        )
        self._completion_tokens = self._counter(
            "vlmgw_completion_tokens_total",
            "Completion tokens, from responses' usage.",
            "model",
            "replica",
            "key",
        )
        self._request_images = self._counter(
            "vlmgw_request_images_total", "Images in requests, once accepted.", "model", "key"
        )

    def _define_images(self) -> None:
        self._image_bytes = self._histogram(
            "vlmgw_image_size_bytes",
            "Size of each image accepted (its bytes before any resizing).",
            _IMAGE_BYTES_BUCKETS,
            "model",
            "source",
        )
        self._image_fetch = self._histogram(
            "vlmgw_image_fetch_seconds",
            "Fetching an http(s) image or reading a file: image.",
            _FETCH_BUCKETS,
            "model",
            "source",
        )
        self._image_decode = self._histogram(
            "vlmgw_image_decode_seconds",
            "Checking, decoding and (when needed) re-encoding an image.",
            _DECODE_BUCKETS,
            "model",
            "source",
        )
        self._media_parts = self._counter(
            "vlmgw_media_parts_total",
            "Video and audio parts accepted, by modality and source (data, http, https, file).",
            "model",
            "modality",
            "source",
        )
        self._media_bytes = self._counter(
            "vlmgw_media_bytes_total",
            "Bytes of the video and audio parts accepted.",
            "model",
            "modality",
        )

    def _define_on_demand(self) -> None:
        self._loads = self._counter(
            "vlmgw_model_loads_total",
            "Loads on demand, by outcome (loaded, failed).",
            "model",
            "outcome",
        )
        self._load_seconds = self._histogram(
            "vlmgw_model_load_seconds",
            "Loads on demand: room made and the model loaded.",
            _LOAD_BUCKETS,
            "model",
        )
        self._unloads = self._counter(
            "vlmgw_model_unloads_total",
            "Models unloaded, by reason (evicted: to make room; idle: idle_unload; admin).",
            "model",
            "reason",
        )
        self._queue_wait = self._histogram(
            "vlmgw_load_queue_wait_seconds",
            "Requests that waited for their model's load: how long.",
            _LOAD_BUCKETS,
            "model",
        )
        self._queue_refusals = self._counter(
            "vlmgw_load_queue_refusals_total",
            "Requests refused while their model loaded (queue_full, load_timeout).",
            "model",
            "reason",
        )

    def _counter(self, name: str, documentation: str, *labels: str) -> Counter:
        return Counter(name, documentation, labels, registry=self.registry)

    def _histogram(
        self, name: str, documentation: str, buckets: tuple[float, ...], *labels: str
    ) -> Histogram:
        return Histogram(name, documentation, labels, buckets=buckets, registry=self.registry)

    def model_label(self, name: str | None) -> str:
        """The name when it is a configured model, else "": clients cannot grow the series."""
        return name if name is not None and name in self._models else ""

    # -- requests ------------------------------------------------------------------------------

    def request_done(
        self,
        route: str,
        method: str,
        status: int,
        model: str,
        replica: str,
        seconds: float,
        key: str = "",
    ) -> None:
        """`key`: the caller's key name (a configured one or `anonymous`: bounded)."""
        model = self.model_label(model)
        self._child(self._requests, route, method, model, replica, str(status), key).inc()
        self._child(self._duration, route, method, model, replica).observe(seconds)

    def first_token(self, route: str, model: str, replica: str, seconds: float) -> None:
        self._child(self._ttft, route, self.model_label(model), replica).observe(seconds)

    def usage(
        self, model: str, replica: str, usage: Mapping[str, Any] | None, key: str = ""
    ) -> None:
        """Count the tokens of an OpenAI `usage` object; anything else is ignored."""
        counts = token_counts(usage)
        model = self.model_label(model)
        for field, counter in (
            ("prompt_tokens", self._prompt_tokens),
            ("completion_tokens", self._completion_tokens),
        ):
            if counts.get(field):
                self._child(counter, model, replica, key).inc(counts[field])

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, made once per label set."""
        child = self._children.get((metric, labels))
        if child is None:
            child = self._children[(metric, labels)] = metric.labels(*labels)
        return child

    def request_images(self, model: str, key: str, count: int) -> None:
        """Images a live request carried, counted once the resolver accepted them all."""
        if count > 0:
            self._child(self._request_images, self.model_label(model), key).inc(count)

    def refusal(self, reason: str, model: str = "") -> None:
        self._child(self._refusals, reason, self.model_label(model)).inc()

    # -- images (the resolver's observer) -----------------------------------------------------

    def image_resolved(
        self,
        model: str,
        source: str,
        size_bytes: int,
        fetch_seconds: float | None,
        decode_seconds: float,
    ) -> None:
        model = self.model_label(model)
        self._child(self._image_bytes, model, source).observe(size_bytes)
        if fetch_seconds is not None:
            self._child(self._image_fetch, model, source).observe(fetch_seconds)
        self._child(self._image_decode, model, source).observe(decode_seconds)

    def image_refused(self, model: str, code: str | None) -> None:
        """Image errors that are policy (limits, blocked URLs) count as refusals; a broken
        image is the client's mistake and shows only as a 400 in vlmgw_requests_total."""
        reason = _IMAGE_REFUSALS.get(code or "")
        if reason is not None:
            self.refusal(reason, model)

    def media_resolved(self, model: str, modality: str, source: str, size_bytes: int) -> None:
        model = self.model_label(model)
        self._child(self._media_parts, model, modality, source).inc()
        self._child(self._media_bytes, model, modality).inc(size_bytes)

    def media_refused(self, model: str, modality: str, code: str | None) -> None:
        """Like images: limits and blocked URLs are refusals; a broken file is a plain 400."""
        reason = _media_refusal(code or "")
        if reason is not None:
            self.refusal(reason, model)

    # -- reliability (server/failover.py, backends/ejection.py) -------------------------------

    def failover(self, model: str, served: bool) -> None:
        self._failovers.labels(self.model_label(model), "served" if served else "failed").inc()

    def ejection(self, model: str, replica: int, cooldown_s: float) -> None:
        del cooldown_s  # in the log line; a label of it would grow without bound
        self._ejections.labels(self.model_label(model), str(replica)).inc()

    # -- loading on demand (backends/ondemand/) ---------------------------------------------

    def model_load(self, model: str, outcome: str, seconds: float) -> None:
        self._loads.labels(self.model_label(model), outcome).inc()
        if outcome == "loaded":
            self._load_seconds.labels(self.model_label(model)).observe(seconds)

    def model_unload(self, model: str, reason: str) -> None:
        self._unloads.labels(self.model_label(model), reason).inc()

    def load_queue_wait(self, model: str, seconds: float) -> None:
        self._queue_wait.labels(self.model_label(model)).observe(seconds)

    def load_queue_refusal(self, model: str, reason: str) -> None:
        self._queue_refusals.labels(self.model_label(model), reason).inc()

    # -- batches -------------------------------------------------------------------------------

    def batch_request(self, model: str, ok: bool) -> None:
        self._batch_requests.labels(self.model_label(model), "completed" if ok else "failed").inc()

    # -- exposition ----------------------------------------------------------------------------

    def render(self, live: Iterable[Collector] = ()) -> bytes:
        """The text exposition: our counts (every process's, in multiprocess mode) followed by
        the families of the scrape-time collectors in `live`."""
        return generate_latest(CollectorChain([self._source, *live]))


class CollectorChain:
    """Several collectors exposed as one (generate_latest takes a single one)."""

    def __init__(self, collectors: list[Collector]) -> None:
        self._collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self._collectors:
            yield from collector.collect()
