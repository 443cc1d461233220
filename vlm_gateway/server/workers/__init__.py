"""`serve --workers N`: what the supervisor's internal app (the backplane) and each worker
process add to the gateway app (docs/operations.md, "Several worker processes")."""
