"""Load `GatewaySettings` from a YAML file, `VLMGW_*` environment variables and CLI flags
(later wins), with error messages that name the bad key and its line in the file."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from vlm_gateway.config.settings import GatewaySettings
from vlm_gateway.core.errors import Loc, loc_to_param

ENV_PREFIX = "VLMGW_"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Top-level scalar settings that VLMGW_<NAME> may set (the model list is YAML-only).
_ENV_KEYS = (
    "host",
    "port",
    "log_level",
    "log_format",
    "access_log",
    "server_timing",
    "ready_policy",
    "api_docs",
    "shutdown_grace",
    "header_timeout",
    "max_upstream_connections",
    "max_loaded_models",
    "data_dir",  # containers point it at their mounted volume
)


class ConfigError(Exception):
    """Invalid configuration: `reasons` are human-readable lines, one per problem."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("\n".join(reasons))
        self.reasons = reasons


def load_settings(
    schema: type[GatewaySettings],
    path: str | Path | None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> GatewaySettings:
    """`schema` is `vlm_gateway.backends.kinds.settings_model()`: it knows every backend kind's
    `models:` entries, which this layer does not."""
    environ = os.environ if environ is None else environ
    data, root = _read_yaml(Path(path), environ) if path else ({}, None)
    for key in _ENV_KEYS:
        if ENV_PREFIX + key.upper() in environ:
            data[key] = environ[ENV_PREFIX + key.upper()]
    _merge_env_api_keys(data, environ)
    if ENV_PREFIX + "BATCH_STORE" in environ:  # e.g. a postgresql:// URL from a secret
        batch = data.get("batch")
        data["batch"] = {
            **(batch if isinstance(batch, dict) else {}),
            "store": environ[ENV_PREFIX + "BATCH_STORE"],
        }
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        reasons = [_describe(err, root, path) for err in exc.errors(include_url=False)]
        raise ConfigError(reasons) from None


def _merge_env_api_keys(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    """VLMGW_API_KEYS (comma-separated) adds to `security.api_keys`; VLMGW_API_KEYS_FILE sets
    `security.api_keys_file`. Keys stay out of the YAML file and out of argv (ps shows argv)."""
    keys = [k.strip() for k in environ.get(ENV_PREFIX + "API_KEYS", "").split(",") if k.strip()]
    key_file = environ.get(ENV_PREFIX + "API_KEYS_FILE")
    security = data.setdefault("security", {}) if (keys or key_file) else None
    if not isinstance(security, dict):
        return  # absent, or not a mapping: validation reports the latter
    if keys:
        security["api_keys"] = list(security.get("api_keys") or []) + keys
    if key_file:
        security["api_keys_file"] = key_file


def _read_yaml(path: Path, environ: Mapping[str, str]) -> tuple[dict[str, Any], yaml.Node | None]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc.strerror}"]) from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return {}, None
        problems = _expand_vars(loader, root, environ, path)
        if problems:
            raise ConfigError(problems)
        data = loader.construct_document(root)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError([f"{path}:{root.start_mark.line + 1}: the top level must be a mapping"])
    return data, root


def _expand_vars(
    loader: yaml.SafeLoader, node: yaml.Node, environ: Mapping[str, str], path: Path
) -> list[str]:
    """Expand ${VAR} in scalars in place, re-resolving the type (so `port: ${PORT}` is an int)."""
    if isinstance(node, yaml.MappingNode):
        return [p for k, v in node.value for p in _expand_vars(loader, v, environ, path)]
    if isinstance(node, yaml.SequenceNode):
        return [p for item in node.value for p in _expand_vars(loader, item, environ, path)]
    if not isinstance(node, yaml.ScalarNode) or "${" not in node.value:
        return []
    missing = [name for name in _VAR.findall(node.value) if name not in environ]
    if missing:
        line = node.start_mark.line + 1
        return [f"{path}:{line}: environment variable ${{{name}}} is not set" for name in missing]
    node.value = _VAR.sub(lambda m: environ[m.group(1)], node.value)
    if node.style is None:  # only unquoted scalars get implicit types (int, bool, ...)
        # types-pyyaml leaves Resolver.resolve unannotated.
        resolve: Callable[..., str] = loader.resolve
        node.tag = resolve(yaml.ScalarNode, node.value, (True, False))
    return []


def _describe(error: ErrorDetails, root: yaml.Node | None, path: str | Path | None) -> str:
    loc = _strip_backend_tag(tuple(error.get("loc", ())))
    key = loc_to_param(loc) or "(top level)"
    line = _line_of(root, loc)
    where = f"{path}:{line}: " if path and line else (f"{path}: " if path else "")
    message = error.get("msg", "invalid value")
    if error.get("type") == "extra_forbidden":
        message = "unknown key"
    elif error.get("type") == "missing":
        message = "required key is missing"
    return f"{where}{key}: {message}"


def _strip_backend_tag(loc: Loc) -> Loc:
    """('models', 0, 'openai', 'base_url') -> ('models', 0, 'base_url'): pydantic inserts the
    union member's tag after the list index; it is not a key in the file."""
    if len(loc) > 2 and loc[0] == "models" and isinstance(loc[1], int):
        return loc[:2] + loc[3:]
    return loc


def _line_of(root: yaml.Node | None, loc: Loc) -> int | None:
    """The 1-based line of the deepest YAML node the error location reaches."""
    node, line = root, None
    for item in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        node = _child(node, item)
    if node is not None:
        line = node.start_mark.line + 1
    return line


def _child(node: yaml.Node, key: Any) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == key:
                return cast(yaml.Node, v)
    if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
        return cast(yaml.Node, node.value[key])
    return None
