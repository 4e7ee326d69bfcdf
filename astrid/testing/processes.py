"""Start worker processes so that they begin their work at the same moment.

Each worker touches ``ready-<name>`` beside the ``go`` path when it is set up, then waits for
``go`` to exist; ``run_together`` creates it once every worker is ready, so the workers really
overlap (what concurrency tests of a store need), then waits for them all.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["run_together"]


def run_together(
    commands: Mapping[str, Sequence[str]], go: Path, *, timeout_s: float = 300.0
) -> None:
    """Run ``commands`` (worker name -> argv), release them together through ``go``, and wait.

    Fails the test (``AssertionError`` with the worker's standard error) when a worker exits
    early, the workers are not ready within ``timeout_s``, or one exits with a non-zero status;
    a worker still running then is killed.
    """
    workers = {
        name: subprocess.Popen(list(argv), stderr=subprocess.PIPE, text=True)
        for name, argv in commands.items()
    }
    try:
        deadline = time.monotonic() + timeout_s
        while not all(go.with_name(f"ready-{name}").exists() for name in workers):
            assert time.monotonic() < deadline, "the workers did not start"
            for name, worker in workers.items():
                if worker.poll() is not None:
                    _out, err = worker.communicate()
                    raise AssertionError(f"worker {name} exited early: {err}")
            time.sleep(0.01)
        go.touch()
        for name, worker in workers.items():
            _out, err = worker.communicate(timeout=timeout_s)
            assert worker.returncode == 0, f"worker {name}: {err}"
    finally:
        for worker in workers.values():
            if worker.poll() is None:
                worker.kill()
                worker.wait()
