"""The one async interface every backend kind implements, the readiness it reports, and the
shape in which a kind registers itself (`BackendKind`).

A backend serves one configured model entry (one replica). The app never knows which kind
it talks to: it asks `state`, calls `chat` / `chat_stream` / `completions`, and turns the
`GatewayError`s they raise into responses.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aiohttp

from vlm_gateway.config.settings import GatewaySettings, ModelEntry
from vlm_gateway.core.errors import InvalidRequestError
from vlm_gateway.core.protocol import ChatCompletionRequest, CompletionRequest
from vlm_gateway.launch.gpu_sharing import StartSequencer


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    UNAVAILABLE = "unavailable"  # was ready or may become so: retried in the background
    FAILED = "failed"  # gave up (bad config, exhausted restarts): needs a person
    STOPPED = "stopped"
    UNLOADED = "unloaded"  # on demand: not in memory; the next request loads it
    LOADING = "loading"  # on demand: being loaded for a waiting request
    SLEEPING = "sleeping"  # on demand: weights parked in host memory (vLLM sleep mode)


@dataclass(frozen=True)
class Status:
    state: State
    reason: str | None = None

    @property
    def ready(self) -> bool:
        return self.state is State.READY


class Backend(ABC):
    """One replica of one model. `name` is the model name clients send."""

    kind: str = "abstract"

    def __init__(self, name: str) -> None:
        self.name = name
        self._in_flight = 0
        self._status = Status(State.STARTING)

    # Told when the replica's last request ends (the on-demand manager: room may have freed).
    on_idle: Callable[[], None] | None = None

    @property
    def in_flight(self) -> int:
        """Requests running now; the router picks the least busy replica."""
        return self._in_flight

    @in_flight.setter
    def in_flight(self, value: int) -> None:
        self._in_flight = value
        if value == 0 and self.on_idle is not None:
            self.on_idle()

    @property
    def status(self) -> Status:
        return self._status

    def set_status(self, state: State, reason: str | None = None) -> None:
        self._status = Status(state, reason)

    async def start(self) -> None:  # noqa: B027 - optional: a kind may have nothing to start
        """Begin becoming ready. Must return promptly: slow work goes to a background task."""

    async def stop(self) -> None:
        """Release everything; after this returns no task or connection of ours is left."""
        self.set_status(State.STOPPED)

    loadable: bool = False  # whether the on-demand manager may load and unload this replica

    async def load(self) -> None:
        """Bring the model into memory; return once it serves (READY), or raise a
        GatewayError saying why not. Called only when `loadable`."""
        raise NotImplementedError(f"{self.kind} backends cannot be loaded on demand")

    async def unload(self) -> None:
        """Give the model's memory back (state UNLOADED or SLEEPING); `load` must work
        again afterwards. Called only when `loadable` and nothing is in flight."""
        raise NotImplementedError(f"{self.kind} backends cannot be unloaded")

    @abstractmethod
    async def chat(self, request: ChatCompletionRequest) -> dict[str, Any]:
        """A complete `chat.completion` object whose `model` is `self.name`."""

    @abstractmethod
    async def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[bytes]:
        """Open the stream and return its SSE events, already framed (`data: ...\\n\\n`).

        Errors known before the first event (bad request, upstream status) are raised by this
        coroutine itself, so the caller can still answer with a plain JSON error; errors after
        that are raised from the iterator and become an error event.
        """

    async def completions(self, request: CompletionRequest) -> dict[str, Any]:
        raise self._no_completions()

    async def completions_stream(self, request: CompletionRequest) -> AsyncIterator[bytes]:
        raise self._no_completions()

    def _no_completions(self) -> InvalidRequestError:
        return InvalidRequestError(
            f"The model '{self.name}' ({self.kind} backend) does not support /v1/completions; "
            "use /v1/chat/completions.",
            param="model",
        )

    async def exported_metrics(self) -> str | None:
        """Prometheus text of a process this replica runs itself (a managed vLLM's own
        /metrics), for the gateway's /metrics to re-export; None when there is none."""
        return None

    def describe(self) -> dict[str, Any]:
        """What /ready and /v1/models report about this replica (our extension fields)."""
        status = self.status
        return {"backend": self.kind, "state": status.state.value, "reason": status.reason}


EntryT = TypeVar("EntryT", bound=ModelEntry)


@dataclass(frozen=True)
class BuildContext:
    """What a kind's builder may use besides its own entry: shared by every backend."""

    settings: GatewaySettings
    client: aiohttp.ClientSession  # the app's one pooled HTTP client
    sequencer: StartSequencer  # processes sharing a GPU start one after another


@dataclass(frozen=True)
class BackendKind(Generic[EntryT]):
    """A backend kind as the registry (vlm_gateway/backends/kinds.py) knows it: the settings
    class of its `models:` entries and the builder that turns one entry into backends (one per
    replica)."""

    settings: type[EntryT]
    builder: Callable[[EntryT, BuildContext], list[Backend]]

    def build(self, entry: ModelEntry, context: BuildContext) -> list[Backend]:
        if not isinstance(entry, self.settings):
            raise TypeError(f"{type(entry).__name__} is not a {self.settings.__name__}")
        return self.builder(entry, context)
