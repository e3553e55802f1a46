"""Evaluation datasets in their official layouts, and the fingerprint distortions."""
