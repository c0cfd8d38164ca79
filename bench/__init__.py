"""Benchmarks for sealog: run each with ``python -m bench.<module>`` from the repository root."""
