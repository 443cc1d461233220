"""The OpenAI Batch API: files and batches kept in an embedded SQLite store, or in PostgreSQL
shared by many gateways, run by a background runner through the same backends as live traffic
(docs/batch.md)."""
