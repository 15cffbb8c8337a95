"""Peak RSS of every command against its ``--memory`` (issue 26): the promise is peak RSS <=
``--memory`` + 300 MB for ``apply`` (``ml-minibatch`` and ``cell-browser``, whose CSC copy of
X is built out of core), ``concat`` (with and without ``--shuffle``) and ``append``, each at
two budgets (``BUDGETS``), on 200,000 cells.

Off unless ``ANNLAYOUT_BENCH_MEMORY=1``: at the default size (200,000 cells x 20,000 genes,
900 nonzeros per cell, X ~1.4 GB, more than either budget) a run takes ~15-20 minutes on 2
cores, plus ~1.5 minutes to generate the inputs the first time. Run it alone, for example::

    ANNLAYOUT_BENCH_MEMORY=1 pytest benchmarks/test_memory_bounds.py -p no:cacheprovider \\
        --benchmark-only -s

The inputs are generated once into a cache directory that later sessions reuse (``generate``
writes atomically: a file or directory there is complete): ``whole.h5ad`` (all the cells, the
input of ``apply``) and a collection of two h5ad files of half the cells each (the inputs of
``concat``; ``append`` adds the second to an ``ml-minibatch`` store of the first, made untimed
before each run). Every command runs once per budget as its own process through
``measure_child.py`` (see ``test_apply.py``: the peak is exactly that process's), with
verification on (its default: verifying is part of the command). Each test asserts its own
bound; ``test_memory_table`` prints and saves the table (``memory_bounds.txt``/``.json`` in
the session's bench dir).

Settings (environment): ``ANNLAYOUT_BENCH_MEMORY_CELLS`` (200000), ``_GENES`` (20000),
``_NNZ`` (900, mean nonzeros per cell asked of the generator), and ``ANNLAYOUT_BENCH_CACHE``
(the inputs' parent directory, default ``<tmp>/annlayout-bench-cache``).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from annlayout.planning.memory import parse_size
from conftest import cache_dir, env_flag, env_int
from tables import publish, text_table
from test_apply import MB, console_script, environment, run_measured

pytestmark = pytest.mark.skipif(
    not env_flag("ANNLAYOUT_BENCH_MEMORY"),
    reason="peak RSS of every command at 200,000 cells (~15-20 min) runs only with "
    "ANNLAYOUT_BENCH_MEMORY=1",
)

BUDGETS = ("1GiB", "2GiB")
RSS_ALLOWANCE = 300 * MB  # peak RSS <= --memory + 300 MB: interpreter, imports, obs/var
SEED = 0
RESULTS = "memory_bounds"
GROUP = "memory: peak RSS of each command against --memory + 300 MB"


@dataclass(frozen=True)
class MemorySettings:
    cells: int
    genes: int
    nnz_per_cell: int
    cache: Path
    rounds: int = 1  # one run per command and budget
    warmup_rounds: int = 0

    @classmethod
    def from_env(cls) -> MemorySettings:
        return cls(
            cells=env_int("ANNLAYOUT_BENCH_MEMORY_CELLS", 200_000, minimum=2),
            genes=env_int("ANNLAYOUT_BENCH_MEMORY_GENES", 20_000, minimum=1),
            nnz_per_cell=env_int("ANNLAYOUT_BENCH_MEMORY_NNZ", 900, minimum=1),
            cache=cache_dir(),
        )

    @property
    def directory(self) -> Path:
        return self.cache / f"memory-{self.cells}x{self.genes}-{self.nnz_per_cell}nnz"

    def generate(self, output: Path, *extra: str | int) -> None:
        command = [console_script("annlayout"), "generate", output, "--cells", self.cells,
                   "--genes", self.genes, "--nnz-per-cell", self.nnz_per_cell, "--seed", SEED,
                   "--quiet", *extra]  # fmt: skip
        subprocess.run([str(c) for c in command], check=True, capture_output=True)


@pytest.fixture(scope="module")
def memory_settings() -> MemorySettings:
    return MemorySettings.from_env()


@pytest.fixture(scope="module")
def whole(memory_settings: MemorySettings) -> Path:
    """All the cells in one h5ad file: the input of apply."""
    path = memory_settings.directory / "whole.h5ad"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        memory_settings.generate(path)
    return path


@pytest.fixture(scope="module")
def parts(memory_settings: MemorySettings) -> list[Path]:
    """The same number of cells in two h5ad files: the inputs of concat and append."""
    directory = memory_settings.directory / "parts"
    if not directory.is_dir():
        directory.parent.mkdir(parents=True, exist_ok=True)
        memory_settings.generate(directory, "--files", 2)
    found = sorted(directory.glob("part-*.h5ad"))
    if len(found) != 2:
        pytest.fail(f"{directory}: {len(found)} part files, expected 2; remove it")
    return found


@pytest.fixture(scope="module")
def memory_results() -> dict[str, dict[str, Any]]:
    """label -> the measured run, filled by the measuring tests, read by the table test."""
    return {}


def check(
    benchmark: Any,
    results: dict[str, dict[str, Any]],
    label: str,
    budget: str,
    command: list[Any],
    result_file: Path,
) -> None:
    """Run ``command`` once through the launcher, record it, assert its bound."""
    run = run_measured(command, result_file)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)  # the timing is the child's
    limit = parse_size(budget) + RSS_ALLOWANCE
    info = {
        "command": " ".join(str(c) for c in command),
        "budget": budget,
        "seconds": round(run["seconds"], 1),
        "peak_mb": round(run["peak_rss"] / MB, 1),
        "limit_mb": round(limit / MB, 1),
        "processes": run["processes"],
        "within": run["peak_rss"] <= limit,
    }
    benchmark.extra_info.update(info)
    results[label] = info
    line = (
        f"{label}: peak RSS {run['peak_rss'] / MB:,.0f} MB, bound {limit / MB:,.0f} MB "
        f"(--memory {budget} + 300 MB), {run['seconds']:.1f} s"
    )
    print("\n" + line)
    assert run["peak_rss"] <= limit, line


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("layout", ["ml-minibatch", "cell-browser"])
def test_apply_peak(benchmark, layout, budget, whole, output_path, bench_dir, memory_results):
    command = [console_script("annlayout"), "apply", layout, whole, output_path,
               "--memory", budget, "--overwrite", "--quiet"]  # fmt: skip
    label = f"apply {layout} --memory {budget}"
    check(benchmark, memory_results, label, budget, command, bench_dir / "apply.measure.json")


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("shuffle", [False, True], ids=["plain", "shuffle"])
def test_concat_peak(benchmark, shuffle, budget, parts, output_path, bench_dir, memory_results):
    command = [console_script("annlayout"), "concat", "ml-minibatch", *parts, output_path,
               "--memory", budget, "--overwrite", "--quiet"]  # fmt: skip
    if shuffle:
        command += ["--shuffle", SEED]
    label = f"concat ml-minibatch{' --shuffle' if shuffle else ''} --memory {budget}"
    check(benchmark, memory_results, label, budget, command, bench_dir / "concat.measure.json")


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("budget", BUDGETS)
def test_append_peak(benchmark, budget, parts, output_path, bench_dir, memory_results):
    """The store is made from the first part (untimed, unmeasured); the second is appended."""
    shutil.rmtree(output_path, ignore_errors=True)
    make = [console_script("annlayout"), "apply", "ml-minibatch", parts[0], output_path,
            "--no-verify", "--quiet"]  # fmt: skip
    subprocess.run([str(c) for c in make], check=True, capture_output=True)
    command = [console_script("annlayout"), "append", output_path, parts[1],
               "--join", "outer", "--memory", budget, "--quiet"]  # fmt: skip
    label = f"append (ml-minibatch store) --memory {budget}"
    check(benchmark, memory_results, label, budget, command, bench_dir / "append.measure.json")


@pytest.mark.benchmark(group="memory: table (not a timing)")
def test_memory_table(
    benchmark, memory_results, memory_settings, bench_dir, terminal_report
):  # fmt: skip
    if not memory_results:
        pytest.skip("no command was measured")
    s = memory_settings
    lines = [("command", "--memory", "peak MB", "bound MB", "s", "within")]
    lines += [
        (
            label,
            r["budget"],
            f"{r['peak_mb']:,.0f}",
            f"{r['limit_mb']:,.0f}",
            f"{r['seconds']:.1f}",
            "yes" if r["within"] else "NO",
        )
        for label, r in memory_results.items()
    ]
    title = (
        f"peak RSS against --memory + 300 MB: {s.cells:,} cells x {s.genes:,} genes, "
        f"{s.nnz_per_cell} nonzeros per cell"
    )
    table = "\n".join([title, *text_table(lines)])
    report = {"environment": {**environment(s), "memory": list(BUDGETS)}, "results": memory_results}
    publish(benchmark, bench_dir, RESULTS, report, table, terminal_report)
