"""Scoring candidates and recommending one."""

from __future__ import annotations

from annlayout.bench.candidates import Candidate
from annlayout.bench.cost import OBJECTIVES, balanced
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


def cost(candidates: list[Candidate]) -> None:
    """Each candidate's dollars per workload epoch (the sum over patterns of annlayout's
    reader's dollars per epoch) and its balanced figure (:func:`~annlayout.bench.cost.balanced`
    against the best score and the lowest cost among the candidates not excluded)."""
    for candidate in candidates:
        candidate.cost_per_epoch = sum(r.dollars_per_epoch for r in candidate.ours())
    eligible = [c for c in candidates if c.excluded is None] or candidates
    best_score = min(c.score for c in eligible)
    best_cost = min(c.cost_per_epoch for c in eligible)
    for candidate in candidates:
        candidate.balanced = balanced(
            candidate.score, best_score, candidate.cost_per_epoch, best_cost
        )


def rank_key(candidate: Candidate, objective: str = "time") -> tuple:
    """Lower is better. time: the score (rounded: scores 0.5% apart are a tie); cost: dollars
    per workload epoch; balanced: the geometric mean of both relative to the best. Ties: the
    score, then the smaller, then the name."""
    if objective not in OBJECTIVES:
        raise BenchError(f"--objective {objective!r}: expected one of {', '.join(OBJECTIVES)}")
    tail = (candidate.size, candidate.name)
    if objective == "cost":
        return (candidate.cost_per_epoch, round(candidate.score, 2), *tail)
    if objective == "balanced":
        return (round(candidate.balanced, 3), round(candidate.score, 2), *tail)
    return (round(candidate.score, 2), *tail)


def recommend(candidates: list[Candidate], objective: str = "time") -> Candidate:
    """The best candidate under ``objective`` not excluded (:func:`rank_key`)."""
    eligible = [c for c in candidates if c.excluded is None]
    if not eligible:
        raise BenchError("every candidate breaks --max-size or --max-objects")
    return min(eligible, key=lambda c: rank_key(c, objective))
