"""vlm-gateway: the HTTP face (app factory, routes, protocol models, errors, settings)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vlm-gateway")  # one source: pyproject.toml, via the installed metadata
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
