"""Benchmarks that run competing code side by side; the figures and their commands are in docs/benchmarks.md.

Run one from the repository root as a module, ``python -m bench.threads`` (the benchmarks share helpers, such as
``bench.generate``'s model sizes, through this package).
"""
