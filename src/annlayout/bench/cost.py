"""What a workload costs on object storage: requests by kind and bytes, priced.

Prices come from a provider table (:class:`Prices`, a YAML file); the shipped default is S3
Standard in us-east-1 (``prices/s3-standard.yaml``). An operation costs its requests times
their price per request plus its bytes read times the egress price; an epoch costs an
operation times the pattern's operations per epoch
(:func:`~annlayout.bench.workloads.ops_per_epoch`); a workload epoch is the sum over its
patterns (one pass of each pattern, whatever its weight: weights say how much a pattern's
time matters, not how often it runs).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat

from annlayout.base.errors import BenchError, LayoutError
from annlayout.layout.yaml_errors import validate_file

GB = 2**30  # as AWS bills data transfer
OBJECTIVES = ("time", "cost", "balanced")


def prices_dir() -> Path:
    return Path(__file__).resolve().parent / "prices"


class Prices(BaseModel):
    """A provider's prices: per 1,000 requests of each kind, and per GB read out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prices: Literal[1] = Field(1, description="Prices file format version.")
    name: str = "S3 Standard us-east-1"
    currency: str = "USD"
    get_per_1000: NonNegativeFloat = 0.0004
    head_per_1000: NonNegativeFloat = 0.0004
    put_per_1000: NonNegativeFloat = 0.005
    post_per_1000: NonNegativeFloat = 0.005
    list_per_1000: NonNegativeFloat = 0.005
    egress_per_gb: NonNegativeFloat = 0.09

    def dollars(
        self, gets: float, nbytes: float, puts: float = 0, lists: float = 0, heads: float = 0
    ) -> float:
        requests = (
            gets * self.get_per_1000
            + heads * self.head_per_1000
            + puts * self.put_per_1000
            + lists * self.list_per_1000
        ) / 1000
        return requests + nbytes / GB * self.egress_per_gb

    def describe(self) -> str:
        return (
            f"{self.name} ({self.currency}): GET {self.get_per_1000:g}, HEAD "
            f"{self.head_per_1000:g}, PUT {self.put_per_1000:g}, POST {self.post_per_1000:g}, "
            f"LIST {self.list_per_1000:g} per 1,000 requests; egress {self.egress_per_gb:g} "
            "per GB"
        )


def load_prices(path: str | Path | None = None) -> Prices:
    """The prices in ``path`` (a YAML file), or the shipped S3 Standard defaults. A bad file
    is a :class:`~annlayout.base.errors.BenchError` naming the file, line and field."""
    if path is None:
        return validate_file(prices_dir() / "s3-standard.yaml", Prices, "a prices mapping")
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"--prices {path}: no such file")
    try:
        return validate_file(path, Prices, "a prices mapping (prices: 1, get_per_1000: ...)")
    except LayoutError as error:
        raise BenchError("; ".join(error.messages)) from None


def balanced(score: float, best_score: float, cost: float, best_cost: float) -> float:
    """Geometric mean of the time score and the cost, each relative to the best candidate's:
    sqrt((score / best score) x (cost / best cost)); 1.0 = best at both."""
    time_ratio = score / best_score if best_score > 0 else 1.0
    cost_ratio = cost / best_cost if best_cost > 0 else 1.0
    return math.sqrt(time_ratio * cost_ratio)


def money(amount: float, digits: int = 3) -> str:
    """``amount`` to ``digits`` significant digits, never in exponent form: 0.0000185,
    0.0123, 1,234.57 (at least two decimals); ``$`` is the caller's."""
    if not math.isfinite(amount):
        return str(amount)
    if amount == 0:
        return "0.00"
    decimals = max(2, digits - 1 - math.floor(math.log10(abs(amount))))
    return f"{amount:,.{decimals}f}"
