"""Loading models on demand (docs/on-demand.md): the manager that loads a model for the
request that needs it, makes room by unloading idle ones, and unloads them when idle."""
