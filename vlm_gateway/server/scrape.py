"""What GET /metrics answers: the app's counters and histograms (vlm_gateway/core/metrics.py),
the live state read at scrape time, and every managed vLLM's own `vllm:` series.

Live state is read, not pushed: requests in flight, each replica's state and its vLLM restarts
come from the BackendRegistry, batches by status from the batch store, at the moment of the
scrape, so no backend knows about metrics.

vLLM's series are fetched from each running vLLM's /metrics during the scrape and re-exported
with `model` and `replica` labels added (docs/operations.md, "Metrics", says why).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import get_args

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from vlm_gateway.backends.base import Backend, State
from vlm_gateway.backends.registry import BackendRegistry
from vlm_gateway.server.batch.protocol import BatchStatus
from vlm_gateway.server.state import GatewayState

log = logging.getLogger(__name__)

VLLM_PREFIX = "vllm:"
_BATCH_STATUSES: tuple[BatchStatus, ...] = get_args(BatchStatus)


async def render_metrics(state: GatewayState) -> bytes:
    # Parsing vLLM's text is the costly part: off the event loop.
    return await asyncio.to_thread(state.metrics.render, await live_collectors(state))


async def live_collectors(state: GatewayState) -> list[LiveState | VllmSeries]:
    """The scrape-time families: replica states, batches, every managed vLLM's series."""
    registry = state.registry
    backends = registry.backends()
    texts = await asyncio.gather(*(backend.exported_metrics() for backend in backends))
    vllm = VllmSeries(
        [
            ExportedText(backend.name, str(registry.replica_index(backend)), text)
            for backend, text in zip(backends, texts, strict=True)
            if text is not None
        ]
    )
    live = LiveState(registry, await state.batch_store.batch_status_counts())
    return [live, vllm]


class LiveState:
    """A snapshot, taken on the event loop when built, exposed as gauge and counter families."""

    def __init__(self, registry: BackendRegistry, batch_counts: dict[str, int]) -> None:
        labels = ["model", "replica"]
        self._in_flight = GaugeMetricFamily(
            "vlmgw_requests_in_flight",
            "Requests a replica is serving now (live and batch).",
            labels=labels,
        )
        self._state = GaugeMetricFamily(
            "vlmgw_replica_state",
            "1 for the replica's current state, 0 for the others.",
            labels=[*labels, "backend", "state"],
        )
        self._restarts = CounterMetricFamily(
            "vlmgw_vllm_restarts",
            "Restarts of a managed vLLM process after it died or wedged.",
            labels=labels,
        )
        self._batch_cap = GaugeMetricFamily(
            "vlmgw_batch_cap",
            "Rows an in-process replica batches now: max_batch_size, less for a while after an "
            "out-of-memory.",
            labels=labels,
        )
        self._out_of_memory = CounterMetricFamily(
            "vlmgw_out_of_memory",
            "Batches of an in-process replica that ran out of device memory (their requests "
            "got 503).",
            labels=labels,
        )
        self._ejected = GaugeMetricFamily(
            "vlmgw_replica_ejected",
            "1 while outlier ejection keeps the replica out of rotation (docs/reliability.md).",
            labels=labels,
        )
        for name in registry.names():
            for index, backend in enumerate(registry.replicas(name)):
                self._add_replica(name, str(index), backend)
                self._ejected.add_metric([name, str(index)], registry.ejector.ejected(backend))
        self._batches = GaugeMetricFamily(
            "vlmgw_batches", "Batches in the store, by status.", labels=["status"]
        )
        for status in _BATCH_STATUSES:
            self._batches.add_metric([status], batch_counts.get(status, 0))

    def _add_replica(self, model: str, replica: str, backend: Backend) -> None:
        self._in_flight.add_metric([model, replica], backend.in_flight)
        current = backend.status.state
        for state in State:
            self._state.add_metric(
                [model, replica, backend.kind, state.value], 1 if state is current else 0
            )
        card = backend.describe()
        restarts = card.get("restarts")
        if isinstance(restarts, int):  # only the kinds that run a process report it
            self._restarts.add_metric([model, replica], restarts)
        if isinstance(card.get("batch_cap"), int):  # only in-process kinds batch themselves
            self._batch_cap.add_metric([model, replica], card["batch_cap"])
            self._out_of_memory.add_metric([model, replica], card["out_of_memory"])

    def collect(self) -> Iterator[Metric]:
        yield from (self._in_flight, self._state, self._restarts, self._ejected, self._batches)
        yield from (self._batch_cap, self._out_of_memory)


@dataclass(frozen=True)
class ExportedText:
    model: str
    replica: str
    text: str


class VllmSeries:
    """Every `vllm:` family of every replica's text, merged into one family per name (two
    HELP/TYPE lines for one name would make the whole scrape invalid) with `model` and
    `replica` labels added to each sample."""

    def __init__(self, sources: list[ExportedText]) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for source in self._sources:
            for family in _vllm_families(source):
                target = merged.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                if target.type != family.type:
                    continue  # two vLLM versions disagreeing: keep the first one's type
                extra = {"model": source.model, "replica": source.replica}
                for sample in family.samples:
                    target.samples.append(sample._replace(labels={**sample.labels, **extra}))
        yield from merged.values()


def _vllm_families(source: ExportedText) -> list[Metric]:
    """The source's `vllm:` families; none (and a warning) when its text does not parse."""
    try:
        families = list(text_string_to_metric_families(source.text))
    except ValueError as exc:
        log.warning(
            "model %s replica %s: vLLM's /metrics did not parse: %s",
            source.model,
            source.replica,
            exc,
        )
        return []
    return [family for family in families if family.name.startswith(VLLM_PREFIX)]
