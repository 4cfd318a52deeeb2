"""Ingest: the listeners (unix socket, TCP) and the sans-IO framing of the line protocol."""
