"""Scoring candidates, with how sure each score is, and the verdict: a clear winner, or a tie
broken by a stated rule.

Every (pattern, reader, candidate) is timed in rounds, each round its own draw of the
pattern's reads, the same draw for every candidate (:class:`~annlayout.bench.measure.Replay`).
A candidate's score in one round is the weighted mean, over the patterns, of its round median
relative to the fastest candidate's in that round (1.00: fastest on every pattern); its score
is the median of its round scores, its interval their range (min to max). Relative within a
round, a round that is slow for every candidate (other work on the machine, slow draws) moves
no score. The range of n rounds holds the median round with probability 1 - 2 x 0.5**n
whatever the distribution (94% for 5); a bootstrap over 5 rounds has too few distinct
resamples to say more.

The verdict compares the best candidate with each other one round by round (the same reads,
the same minute): it is ahead by more than the uncertainty when the other's round score is
above its own by more than :data:`MARGIN` in every round, i.e. the whole range of their
ratio lies above 1 + MARGIN. Two candidates equally fast pass that in all 5 rounds with
probability below 2**-5, and by chance the margin rarely.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from annlayout.base.errors import BenchError
from annlayout.bench.candidates import Candidate
from annlayout.bench.cost import OBJECTIVES, balanced
from annlayout.planning.plan import human_size

#: sizes within this share of each other are the same size to the tie-break, which then looks
#: at objects: a few kilobytes of metadata or compression noise decide nothing
SAME_SIZE = 0.01
#: costs are counted, not timed, but on one round's draws: within this share, a tie
SAME_COST = 0.01
#: a lead under 5% in some round is no lead: run-to-run noise on a shared machine is that big
MARGIN = 0.05
TIE_BREAK = "bytes on disk (within 1% is equal), then stored objects, then write time"


def score(
    candidates: list[Candidate],
    max_size: float | None,
    max_objects: int | None,
    reader: str = "annlayout",
) -> None:
    """Each candidate's score and interval through ``reader`` (see the module); candidates
    that break ``max_size`` (times the smallest), ``max_objects`` or a training pattern's
    ``min_mixing`` (through ``reader``'s loader) are excluded, and so are
    those that carry a second orientation of X no pattern reads through ``reader`` while a
    candidate without one is left."""
    ours = {c.name: {r.pattern: r for r in c.results if r.reader == reader} for c in candidates}
    patterns = {r.pattern: r.weight for c in candidates for r in c.results}
    for candidate in candidates:
        candidate.reader = reader
        if set(ours[candidate.name]) != set(patterns):
            raise BenchError(f"--reader {reader}: it could not read candidate {candidate.name}")
    rounds = min(len(r.rounds) for c in candidates for r in ours[c.name].values())
    if rounds == 0:
        raise BenchError("nothing was timed")
    best = {
        (p, k): min(ours[c.name][p].rounds[k] for c in candidates)
        for p in patterns
        for k in range(rounds)
    }
    total = sum(patterns.values())
    for candidate in candidates:
        mine = ours[candidate.name]
        candidate.rounds = [
            sum(w * mine[p].rounds[k] / max(best[p, k], 1e-9) for p, w in patterns.items()) / total
            for k in range(rounds)
        ]
        candidate.score = statistics.median(candidate.rounds)
        candidate.low, candidate.high = min(candidate.rounds), max(candidate.rounds)
        candidate.excluded = None
    smallest = min(c.size for c in candidates)
    for candidate in candidates:
        if max_size is not None and candidate.size > max_size * smallest:
            candidate.excluded = f"size {candidate.size / smallest:.2f}x the smallest > {max_size}x"
        elif max_objects is not None and candidate.objects > max_objects:
            candidate.excluded = f"{candidate.objects:,} objects > {max_objects:,}"
        elif (unmixed := _unmixed(candidate)) is not None:
            candidate.excluded = unmixed
    unread = [c for c in candidates if c.excluded is None and _unread_copy(c)]
    if len(unread) < sum(c.excluded is None for c in candidates):
        for candidate in unread:
            copies = "+".join(candidate.x_orientations[1:])
            candidate.excluded = (
                f"carries a {copies} copy of X that no pattern reads ({reader} reader)"
            )


def _unmixed(candidate: Candidate) -> str | None:
    """Why the candidate's batches mix their label less than a pattern's ``min_mixing``
    allows (its reader's loader), or None."""
    for r in candidate.ours():
        ratio = r.mixing_ratio
        if r.min_mixing is not None and ratio is not None and ratio < r.min_mixing:
            return (
                f"mixing {ratio:.2f} of a true permutation's < min_mixing {r.min_mixing} "
                f"({r.pattern}, {r.label}, {candidate.reader} loader)"
            )
    return None


def _unread_copy(candidate: Candidate) -> bool:
    return len(candidate.x_orientations) > 1 and not any(r.copy_bytes for r in candidate.ours())


def cost(candidates: list[Candidate]) -> None:
    """Each candidate's dollars per workload epoch (the sum over patterns of its reader's
    dollars per epoch) and its balanced figure (:func:`~annlayout.bench.cost.balanced`
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
        candidate.balanced_interval = (
            balanced(candidate.low, best_score, candidate.cost_per_epoch, best_cost),
            balanced(candidate.high, best_score, candidate.cost_per_epoch, best_cost),
        )


def figure(candidate: Candidate, objective: str) -> tuple[float, float, float]:
    """The candidate's (point, low, high) under ``objective``: the score and its interval
    (time); dollars per epoch, exact (cost); the balanced figure and the interval its
    score's gives it (balanced)."""
    if objective == "cost":
        return (candidate.cost_per_epoch,) * 3
    if objective == "balanced":
        return (candidate.balanced, *candidate.balanced_interval)
    return candidate.score, candidate.low, candidate.high


def round_figures(candidate: Candidate, objective: str) -> list[float]:
    """The candidate's figure in each round under ``objective`` (only ratios between two
    candidates' figures of one round are meaningful): the round score, dollars (the same in
    every round: counted, not timed), or the geometric mean of both."""
    if objective == "cost":
        return [candidate.cost_per_epoch] * max(1, len(candidate.rounds))
    if objective == "balanced":
        return [(s * candidate.cost_per_epoch) ** 0.5 for s in candidate.rounds]
    return list(candidate.rounds)


def lead(best: Candidate, other: Candidate, objective: str) -> tuple[float, float]:
    """The range, over the rounds, of ``other``'s figure over ``best``'s: (min, max)."""
    ratios = [
        o / b if b > 0 else (1.0 if o == b else float("inf"))
        for b, o in zip(round_figures(best, objective), round_figures(other, objective),
                        strict=False)
    ]  # fmt: skip
    return min(ratios), max(ratios)


def margin(objective: str) -> float:
    return SAME_COST if objective == "cost" else MARGIN


def rank_key(candidate: Candidate, objective: str = "time") -> tuple:
    """Lower is better: the figure under ``objective`` (:func:`figure`), then the score,
    then the smaller, then the name. Orders tables; the verdict is :func:`verdict`'s."""
    if objective not in OBJECTIVES:
        raise BenchError(f"--objective {objective!r}: expected one of {', '.join(OBJECTIVES)}")
    return (figure(candidate, objective)[0], candidate.score, candidate.size, candidate.name)


@dataclass
class Verdict:
    """What bench recommends and why."""

    winner: Candidate
    clear: bool  # ahead of every other candidate by more than the intervals
    best: Candidate  # the best figure under the objective (the winner when clear)
    tied: list[Candidate] = field(default_factory=list)  # not clearly behind the best, best first
    objective: str = "time"
    tie_break: str = ""  # what decided among the tied, e.g. "the smallest on disk (...)"

    @property
    def kind(self) -> str:
        if self.clear:
            return "clear winner"
        return "tie" if len(self.tied) > 1 else "only candidate"

    def summary(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "recommended": self.winner.name,
            "best": self.best.name,
            "tied": [c.name for c in self.tied],
            "objective": self.objective,
            "tie_break_rule": TIE_BREAK,
            "tie_break": self.tie_break,
        }


def verdict(candidates: list[Candidate], objective: str = "time") -> Verdict:
    """The best candidate not excluded under ``objective``: the clear winner when it leads
    every other in every round by more than :func:`margin` (:func:`lead`), else the tie (it
    and every candidate it does not lead so) broken by :data:`TIE_BREAK`."""
    eligible = [c for c in candidates if c.excluded is None]
    if not eligible:
        raise BenchError("every candidate breaks --max-size, --max-objects or min_mixing")
    ordered = sorted(eligible, key=lambda c: rank_key(c, objective))
    best = ordered[0]
    tied = [c for c in ordered if c is best or lead(best, c, objective)[0] <= 1 + margin(objective)]
    if len(ordered) == 1:
        return Verdict(best, False, best, [best], objective)
    if len(tied) == 1:
        return Verdict(best, True, best, tied, objective)
    winner, why = _break_tie(tied)
    return Verdict(winner, False, best, tied, objective, why)


def _break_tie(tied: list[Candidate]) -> tuple[Candidate, str]:
    smallest = min(c.size for c in tied)
    small = [c for c in tied if c.size <= smallest * (1 + SAME_SIZE)]
    if len(small) == 1:
        winner = small[0]
        next_size = min(c.size for c in tied if c is not winner)
        return winner, (
            f"the smallest on disk ({human_size(winner.size)}, "
            f"{(next_size - winner.size) / next_size:.0%} less than the next, {human_size(next_size)})"
        )
    fewest = min(c.objects for c in small)
    few = [c for c in small if c.objects == fewest]
    if len(few) == 1:
        winner = few[0]
        others = min(c.objects for c in small if c is not winner)
        return winner, (
            f"as small on disk as the others (within 1%) and the fewest objects "
            f"({winner.objects:,} against {others:,})"
        )
    winner = min(few, key=lambda c: (c.write_seconds, c.name))
    return winner, (
        f"as small and as many objects as the others, and the fastest to write "
        f"({winner.write_seconds:.2f} s)"
    )


def recommend(candidates: list[Candidate], objective: str = "time") -> Candidate:
    """The candidate :func:`verdict` recommends."""
    return verdict(candidates, objective).winner
