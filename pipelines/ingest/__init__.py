"""Ingest: `avtime preprocess` turns videos into Arrow segment shards (Ray Data + PyAV)."""
