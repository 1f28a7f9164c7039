"""Benchmarks for igbutton: ``make bench`` (``python -m bench``).

Every load generator, subscriber and server runs in its own process on loopback; the
orchestrator (``bench.__main__``) only starts them, reads their results and measures the
servers' CPU and memory from outside. Results land in ``bench/results/`` and a summary
table in ``docs/performance.md``.
"""
