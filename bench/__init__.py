"""Benchmarks: `python -m bench.<script>`."""
