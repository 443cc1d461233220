"""HTTP routes: parse, pick the backend, call it, answer JSON or SSE. No logic beyond that."""
