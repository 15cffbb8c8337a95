"""Scoring candidates and recommending one."""

from __future__ import annotations

from annlayout.bench.candidates import Candidate
from annlayout.errors import BenchError


def score(candidates: list[Candidate], max_size: float | None, max_objects: int | None) -> None:
    """Weighted mean, over patterns, of each candidate's median latency relative to the best;
    candidates that break ``max_size`` (times the smallest) or ``max_objects`` are excluded."""
    ours = {
        c.name: {r.pattern: r for r in c.results if r.reader == "annlayout"} for c in candidates
    }
    patterns = {r.pattern: r.weight for c in candidates for r in c.results}
    best = {p: min(ours[c.name][p].median for c in candidates) for p in patterns}
    total = sum(patterns.values())
    smallest = min(c.size for c in candidates)
    for candidate in candidates:
        candidate.score = (
            sum(
                w * ours[candidate.name][p].median / max(best[p], 1e-9) for p, w in patterns.items()
            )
            / total
        )
        candidate.excluded = None
        if max_size is not None and candidate.size > max_size * smallest:
            candidate.excluded = f"size {candidate.size / smallest:.2f}x the smallest > {max_size}x"
        elif max_objects is not None and candidate.objects > max_objects:
            candidate.excluded = f"{candidate.objects:,} objects > {max_objects:,}"


def recommend(candidates: list[Candidate]) -> Candidate:
    """The best-scoring candidate not excluded (ties: the smaller, then the name)."""
    eligible = [c for c in candidates if c.excluded is None]
    if not eligible:
        raise BenchError("every candidate breaks --max-size or --max-objects")
    return min(eligible, key=lambda c: (round(c.score, 2), c.size, c.name))
