"""Synthetic AnnData for demos, tests and benchmarks (``annlayout generate``)."""
