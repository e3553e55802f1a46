"""The training engine: Ray Train driver, per-worker loop, optimiser and checkpoints."""
