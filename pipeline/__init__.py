"""Refinery: the ingest, raw store, wire protocol and processing side."""
