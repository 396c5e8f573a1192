"""Benchmarks; ``benchmarks.load`` (the load generator and deployment) is importable by tests."""
