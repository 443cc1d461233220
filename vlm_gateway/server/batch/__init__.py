"""The OpenAI Batch API: files and batches kept in an embedded SQLite store, run by a
background runner through the same backends as live traffic (docs/batch.md)."""
