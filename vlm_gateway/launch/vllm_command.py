"""The `vllm serve` command line for one managed process, and what its log and model
directory say about max_model_len."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

# Flags the gateway sets itself: it has to know them to route, so extra_args may not override.
GATEWAY_OWNED_FLAGS = ("--host", "--port", "--served-model-name")
# Flags the gateway writes from the entry's image and media limits: the limits it checks each
# request against must be the ones vLLM holds, so they have one source (the config's keys).
MEDIA_FLAGS = ("--limit-mm-per-prompt", "--media-io-kwargs", "--trust-request-mm-kwargs")

_ESTIMATE = re.compile(r"estimated maximum model length is (\d+)")
# Where a model's own maximum length lives in config.json, text config first for VLMs.
_LENGTH_KEYS = ("max_position_embeddings", "max_sequence_length", "seq_length", "n_positions")


@dataclass(frozen=True)
class VllmCommand:
    command: tuple[str, ...]
    model: str
    served_name: str
    host: str = "127.0.0.1"
    port: int | None = None  # None: a free port is picked at each launch
    max_model_len: int | None = None  # None: vLLM's own choice (the model's maximum)
    gpu_memory_utilization: float | None = None
    gpus: tuple[int, ...] | None = None
    chat_template: str | None = None
    enable_prefix_caching: bool = True
    # Items per request for each modality the model takes, e.g. (("image", 8), ("video", 1)).
    mm_limits: tuple[tuple[str, int], ...] = ()
    # How vLLM samples a video's frames when a request does not say: num_frames and/or fps.
    video_sampling: tuple[tuple[str, float], ...] = ()
    extra_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = field(default=())

    def argv(self, port: int | None = None) -> list[str]:
        port = port if port is not None else self.port
        argv = [
            *self.command,
            "serve",
            self.model,
            "--served-model-name",
            self.served_name,
            "--host",
            self.host,
            "--port",
            str(port) if port is not None else "<free port>",
        ]
        if self.max_model_len is not None:
            argv += ["--max-model-len", str(self.max_model_len)]
        if self.gpu_memory_utilization is not None:
            argv += ["--gpu-memory-utilization", f"{self.gpu_memory_utilization:g}"]
        if self.chat_template:
            argv += ["--chat-template", self.chat_template]
        if self.enable_prefix_caching:
            argv.append("--enable-prefix-caching")
        return argv + self.media_flags() + list(self.extra_args)

    def media_flags(self) -> list[str]:
        """`--limit-mm-per-prompt` and `--media-io-kwargs` as JSON, vLLM's own syntax for both
        (its dotted form, `--limit-mm-per-prompt.image 8`, would need one flag per key), and
        `--trust-request-mm-kwargs`."""
        flags = []
        if self.mm_limits:
            flags += ["--limit-mm-per-prompt", _json(dict(self.mm_limits))]
            # vLLM refuses per-request media_io_kwargs / mm_processor_kwargs unless told to
            # trust them: the gateway holds them to bounds first (media/request_kwargs.py).
            flags.append("--trust-request-mm-kwargs")
        if self.video_sampling:
            sampling = {key: _number(value) for key, value in self.video_sampling}
            flags += ["--media-io-kwargs", _json({"video": sampling})]
        return flags

    def env_additions(self) -> dict[str, str]:
        additions = {}
        if self.gpus is not None:
            additions["CUDA_VISIBLE_DEVICES"] = ",".join(str(gpu) for gpu in self.gpus)
        return additions | dict(self.env)

    def with_max_model_len(self, value: int | None) -> VllmCommand:
        return replace(self, max_model_len=value)


def flag_name(arg: str) -> str:
    """The flag an argv word sets, as vLLM reads it: `--a_b=1` and `--a-b.key` both set `--a-b`
    (vLLM turns underscores into dashes before the first dot, and a dot sets one JSON key)."""
    if not arg.startswith("--"):
        return arg
    name = arg.split("=", 1)[0].split(".", 1)[0]
    return "--" + name[2:].replace("_", "-")


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _number(value: float) -> int | float:
    # YAML's `fps: 2` arrives as 2.0; vLLM reads either, people read 2 more easily.
    return int(value) if float(value).is_integer() else value


def estimated_max_model_len(log_text: str) -> int | None:
    """The length vLLM says its KV cache can hold, from the log of a start it refused.

    Only for diagnosing a process that already exited, never for readiness."""
    found = _ESTIMATE.findall(log_text)
    return int(found[-1]) if found else None


def model_max_len(model: str) -> int | None:
    """The model's own maximum length, when `model` is a local directory with a config.json."""
    try:
        config = json.loads((Path(model) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    for section in (config.get("text_config"), config):
        if isinstance(section, dict):
            for key in _LENGTH_KEYS:
                value = section.get(key)
                if isinstance(value, int) and value > 0:
                    return value
    return None


def first_max_model_len(setting: int | str | None, cap: int | None, model: str) -> int | None:
    """What the first launch asks for: a number as given; `auto`: the model's own maximum,
    at most `cap` (None where unknown and uncapped: vLLM derives it)."""
    if setting is None or isinstance(setting, int):
        return setting
    own = model_max_len(model)
    if own is None:
        return cap
    return min(own, cap) if cap else own
