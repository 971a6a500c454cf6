"""Helpers that only tests and benchmarks use (not part of the library's API)."""
