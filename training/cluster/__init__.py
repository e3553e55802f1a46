"""Cluster operations: `avtime submit` (Ray Jobs, KubeRay, the cluster launcher) and its job environment."""
