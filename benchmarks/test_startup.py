"""Start-up: ``annlayout --help`` and ``annlayout layouts`` as whole processes.

Target (the restructure issue): each at most **0.3 s**, median of the rounds, interpreter start
and exit included. Unlike the other suites this is an absolute figure: the commands do no work
that grows with a dataset, so there is no baseline to divide by; the bare interpreter
(``python -c pass``) is measured alongside so a slow machine shows as such in the table.
``tests/test_cli.py`` checks what the commands import (no numpy, zarr, anndata or pydantic),
which is what keeps them fast.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from tables import publish, text_table

TARGET_SECONDS = 0.3
ROUNDS = 9
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "annlayout --help": [str(Path(sys.executable).with_name("annlayout")), "--help"],
    "annlayout layouts": [str(Path(sys.executable).with_name("annlayout")), "layouts"],
}


@pytest.fixture(scope="module")
def startup_results() -> dict[str, float]:
    return {}


@pytest.mark.parametrize("label", list(COMMANDS))
def test_startup(benchmark, startup_results, label):
    command = COMMANDS[label]
    run = lambda: subprocess.run(command, check=True, capture_output=True)  # noqa: E731
    run()  # warm the page cache and bytecode
    benchmark.group = "start-up"
    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    startup_results[label] = statistics.median(benchmark.stats.stats.data)


def test_startup_target(benchmark, startup_results, bench_dir, terminal_report):
    missing = [label for label in COMMANDS if label not in startup_results]
    if missing:
        pytest.skip(f"not measured: {', '.join(missing)}")
    lines = [("command", "median s", "target s")]
    for label, seconds in startup_results.items():
        target = "-" if label.startswith("python") else f"{TARGET_SECONDS:.2f}"
        lines.append((label, f"{seconds:.3f}", target))
    table = "\n".join(text_table(lines))
    publish(benchmark, bench_dir, "startup", startup_results, table, terminal_report)
    slow = {
        label: seconds
        for label, seconds in startup_results.items()
        if label.startswith("annlayout") and seconds > TARGET_SECONDS
    }
    assert not slow, f"slower than {TARGET_SECONDS} s: {slow}"
