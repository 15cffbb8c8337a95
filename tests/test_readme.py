"""The README runs as written: its demo, its command-line block, its Python block and its
layout file, in order, in a fresh directory, as a newcomer pastes them. (.ci/run runs the
ci:demo block with its install, and the ci:test and ci:docs blocks; the docs build runs the
getting-started page and the cookbook.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"
CI_MARKER = re.compile(r"<!-- ci:(\w+) -->\s*$")
INSTALL = re.compile(r"^pip install [^&]*&&\s*")  # this environment is the install


def blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block of the README but the test and docs commands
    (which run this test), the demo without its install."""
    found, lines = [], README.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        marker = CI_MARKER.match(lines[i - 1]) if i else None
        text = "\n".join(lines[i + 1 : end])
        if marker is None or marker.group(1) == "demo":
            found.append((fence.group(1), INSTALL.sub("", text)))
        i = end + 1
    return found


def test_the_readme_runs_as_written(tmp_path):
    shown = blocks()
    languages = [language for language, _ in shown]
    assert languages.count("bash") >= 1 and "python" in languages and "yaml" in languages
    scripts = Path(sys.executable).parent  # the console script of this environment
    env = {**os.environ, "PATH": f"{scripts}{os.pathsep}{os.environ['PATH']}"}
    for language, text in shown:
        if language == "bash":
            command = ["bash", "-euo", "pipefail", "-c", text]
        elif language == "python":
            command = [sys.executable, "-c", text]
        elif language == "yaml":  # a layout file: it loads, and plans against the demo data
            layout = tmp_path / "readme-layout.yaml"
            layout.write_text(text)
            command = ["annlayout", "plan", str(layout), "demo.h5ad"]
        else:
            pytest.fail(f"README block in {language or 'no language'}: say how to run it")
        done = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, f"{language} block failed:\n{text}\n{done.stderr[-3000:]}"
