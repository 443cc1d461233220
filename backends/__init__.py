"""Backends: one module per kind, all behind `backends.base.Backend`."""
