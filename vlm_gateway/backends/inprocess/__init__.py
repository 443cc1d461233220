"""The engine every in-process backend kind shares (not itself a kind). Nothing here imports
torch: a kind's loading imports it, in the model thread."""
