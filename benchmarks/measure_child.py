"""Run one command; write its wall time, peak memory and CPU time as JSON. Used by test_apply.py.

    python measure_child.py RESULT.json -- COMMAND [ARG ...]

Why a launcher of its own instead of spawning the command from pytest: on Linux a child's
``ru_maxrss`` starts from the high-water mark of the memory it was forked (or vforked) from, so
a command started directly by a pytest process that holds a 1 GB dataset reports at least 1 GB
whatever it used. Started from this small process (stdlib, plus psutil when installed, ~15 MB),
the command's ``ru_maxrss`` is its own. ``os.wait4`` gives that number for exactly this child
(``getrusage(RUSAGE_CHILDREN)`` is the maximum over every child ever waited for, so it cannot be
read per command).

``ru_maxrss`` is the peak of the largest single process. A command that starts worker processes
(annizarr's h5ad readers) uses their memory at the same time, so a thread also samples the whole
process tree every ``INTERVAL`` seconds: the sum of RSS while there is one process, the sum of
PSS (shared pages divided among their users) once there are several. The reported
``peak_rss`` is ``ru_maxrss`` when the command never had a second process, otherwise the larger
of ``ru_maxrss`` and the sampled peak of the tree.

The wall time runs from just before the spawn to the moment ``wait4`` returns: interpreter
start, imports and exit are included. The JSON holds the command's exit code; this script itself
exits 0 whenever it could run the command, and 2 if it could not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

INTERVAL = 0.02  # seconds between samples of the process tree


class TreeSampler:
    """Samples the memory of a process and all its descendants in a thread."""

    def __init__(self, pid: int) -> None:
        self.peak = 0
        self.processes = 1
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import psutil
        except ImportError:  # peak_rss is then ru_maxrss alone
            self._root = None
            return
        try:
            self._root = psutil.Process(pid)  # before wait4: the pid cannot be reused yet
        except psutil.Error:
            self._root = None
            return
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(INTERVAL):
            try:
                procs = [self._root, *self._root.children(recursive=True)]
            except psutil.Error:
                continue
            total = 0
            for proc in procs:
                try:
                    if len(procs) == 1:
                        total += proc.memory_info().rss
                    else:
                        total += proc.memory_full_info().pss
                except psutil.Error:  # exited (or a zombie) between listing and reading
                    pass
            self.samples += 1
            self.peak = max(self.peak, total)
            self.processes = max(self.processes, len(procs))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    result_path, command = argv[0], argv[2:]
    start = time.perf_counter()
    try:
        proc = subprocess.Popen(command)  # stdout and stderr are ours: the caller captures them
    except OSError as err:
        print(f"measure_child: cannot run {command[0]}: {err}", file=sys.stderr)
        return 2
    sampler = TreeSampler(proc.pid)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; Popen must not wait
    sampler.stop()
    maxrss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # bytes on macOS
    result = {
        "command": command,
        "returncode": proc.returncode,
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "maxrss": maxrss,
        "tree_peak": sampler.peak,
        # one process: the kernel's exact peak; several: also their sampled sum
        "peak_rss": maxrss if sampler.processes == 1 else max(maxrss, sampler.peak),
        "processes": sampler.processes,
        "samples": sampler.samples,
    }
    with open(result_path, "w") as file:
        json.dump(result, file)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
