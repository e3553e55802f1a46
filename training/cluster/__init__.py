"""Cluster operations: `avtime submit` (Ray Jobs) and `avtime compare` (MLflow runs)."""
