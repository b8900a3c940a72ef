"""Timing and provenance helpers shared by the benchmark scripts in bench/."""

from __future__ import annotations

import os
import statistics
import subprocess
import time

import jax


def time_fn(fn, args, *, samples: int, min_sample_s: float):
    """Median/min/max seconds per call over ``samples`` samples of back-to-back calls.

    Warm-up (compilation included) is excluded; each sample launches the call enough times
    back to back to last about ``min_sample_s`` and ends with ``block_until_ready``, so host
    launch overhead is amortised the same way for every backend.
    """
    for _ in range(2):
        jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    one = time.perf_counter() - start
    inner = max(1, min(100, int(min_sample_s / max(one, 1e-7))))
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        for _ in range(inner):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / inner)
        del out
    return statistics.median(times), min(times), max(times)


def git_commit():
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
    except Exception:
        return "unknown"
