"""Video and audio parts: their limits, the probe that checks them, and the resolver that makes
each one a checked data URL before any backend sees it (docs/media.md)."""
