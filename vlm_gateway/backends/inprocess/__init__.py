"""The engine every in-process backend kind shares (not itself a kind): a model thread, the
dynamic micro-batcher, per-token streaming, cancellation and the OpenAI output shapes.

A kind subclasses `InProcessBackend` (`backend.py`) and supplies its loading, its per-request
preparation and its batched generation; everything between the request and those lives here,
once. Nothing here imports torch: a kind's loading imports it, in the model thread."""
