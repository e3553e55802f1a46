"""Benchmarks that print side-by-side ratios (not timed tests). `python -m bench --list`."""
