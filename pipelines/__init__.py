"""avtime pipelines: decode, ingest, pretext sampling, augmentation, streams, synthetic corpus."""
