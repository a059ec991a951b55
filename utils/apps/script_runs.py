"""Running the project's scripts as a user would, for the tools that tabulate many runs
(tools/demo_table.py, tools/objective_ablation.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project root


def run_script(command: list[str], log_path: str, threads: int | None) -> float:
    """Run ``python *command`` in the project's root to completion, its output into ``log_path``
    (``threads``: OMP_NUM_THREADS for it, None: the default); the wall seconds it took. A failure
    ends the tool with one line naming the command and the log."""
    environment = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    start = time.perf_counter()
    with open(log_path, "w") as log:
        code = subprocess.call([sys.executable, *command], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                               env=environment)
    if code:
        raise SystemExit(f"{' '.join(command)} failed (exit {code}); see {log_path}")
    return time.perf_counter() - start
