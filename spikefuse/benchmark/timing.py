"""Timing and provenance shared by every benchmark (the CLI and the scripts in ``bench/``)."""

from __future__ import annotations

import concurrent.futures
import math
import os
import platform
import statistics
import subprocess
import time

import jax
import jax.numpy as jnp


def time_fn(fn, args, *, samples: int, min_sample_s: float):
    """Median/min/max seconds per call over ``samples`` samples of back-to-back calls.

    Warm-up (compilation included) is excluded; each sample launches the call enough times
    back to back to last about ``min_sample_s`` and ends with ``block_until_ready``, so host
    launch overhead is amortised the same way for every backend.
    """
    return time_interleaved({0: (fn, args)}, samples=samples, min_sample_s=min_sample_s)[0]


def time_interleaved(calls: dict, *, samples: int, min_sample_s: float, on_first=None) -> dict:
    """Times several functions, taking their samples in turns.

    ``calls`` maps a key to ``(fn, args)``. Each function is warmed up (compilation
    included) in the order given — ``on_first(key)`` runs after its first call has
    finished, e.g. to read the device's peak memory — and calibrated: a sample launches it
    enough times back to back to last about ``min_sample_s`` and ends with
    ``block_until_ready``, so host launch overhead is amortised alike for every backend.
    Then each of ``samples`` rounds times one sample of every function in turn, so a change
    of load on a shared machine falls on all of them alike and their ratios stay
    comparable. Returns ``{key: (median, min, max)}`` seconds per call.
    """
    inner = {}
    for key, (fn, args) in calls.items():
        jax.block_until_ready(fn(*args))
        if on_first:
            on_first(key)
        jax.block_until_ready(fn(*args))
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        one = time.perf_counter() - start
        inner[key] = max(1, min(100, int(min_sample_s / max(one, 1e-7))))
    times = {key: [] for key in calls}
    for _ in range(max(1, samples)):
        for key, (fn, args) in calls.items():
            start = time.perf_counter()
            for _ in range(inner[key]):
                out = fn(*args)
            jax.block_until_ready(out)
            times[key].append((time.perf_counter() - start) / inner[key])
            del out
    return {k: (statistics.median(t), min(t), max(t)) for k, t in times.items()}


# The copy ceiling is measured at most at this many elements (2^27: 512 MiB in f32, well
# past every cache); larger rows use it.
COPY_MAX_ELEMENTS = 1 << 27
COPY_MIN_SAMPLES = 15


def copy_ceiling(n: int, dtype, *, samples: int, min_sample_s: float) -> dict:
    """The bandwidth ceiling at ``n`` elements: ``x + 1`` (one read, one write), timed.

    ``gbps`` is taken from the fastest sample (at least ``COPY_MIN_SAMPLES`` of them), not
    the median: a ceiling is the best this device showed, so a row's median cannot pass it
    by the copy's own noise. ``gbps_median`` is the median's rate.
    """
    dtype = jnp.dtype(dtype)
    a = jnp.ones((n,), dtype)
    copy = jax.jit(lambda a: a + jnp.asarray(1, a.dtype))
    med, lo, hi = time_fn(copy, (a,), samples=max(samples, COPY_MIN_SAMPLES),
                          min_sample_s=min_sample_s)
    del a
    nbytes = 2 * n * dtype.itemsize
    return dict(elements=n, dtype=dtype.name, ms=med * 1e3, ms_min=lo * 1e3, ms_max=hi * 1e3,
                gbps=nbytes / lo / 1e9, gbps_median=nbytes / med / 1e9)


def copy_ceilings(sizes, dtypes, *, samples: int, min_sample_s: float) -> list[dict]:
    """`copy_ceiling` at every distinct size (capped at ``COPY_MAX_ELEMENTS``) and dtype.

    Each row is compared with the copy of its own size (`ceiling_for`): which cache level
    holds the data decides the bandwidth, most of all on a CPU, where a copy of 2^19
    elements outside the rows' cache level once read a ninth of what rows of 2^18 reached.
    """
    ns = sorted({min(int(n), COPY_MAX_ELEMENTS) for n in sizes})
    return [copy_ceiling(n, d, samples=samples, min_sample_s=min_sample_s)
            for d in dict.fromkeys(jnp.dtype(d).name for d in dtypes) for n in ns]


def best_ceilings(copy: list[dict]) -> list[dict]:
    """``copy`` with one record per (dtype, elements): the fastest of its measurements.

    On a CPU shared with other work the copy is sometimes slowed while it is timed, so the
    CLI measures it again before each case's rows and keeps the best, rather than let one
    busy moment lower the ceiling under the rows."""
    best = {}
    for c in copy:
        key = (c["dtype"], c["elements"])
        if key not in best or c["gbps"] > best[key]["gbps"]:
            best[key] = c
    return list(best.values())


def pct_of_ceiling(row: dict, copy: list[dict]) -> float:
    """``row``'s GB/s as a percentage of the copy ceiling of its dtype and size."""
    return 100.0 * row["gbps"] / ceiling_for(copy, row["dtype"], row["elements"])["gbps"]


def ceiling_for(copy: list[dict], dtype, elements: int) -> dict:
    """The record of ``copy`` (from `copy_ceilings`) for a row of ``elements`` in ``dtype``:
    the same size, else the nearest measured size (in log scale); of several measurements
    of that size, the fastest."""
    dtype = jnp.dtype(dtype).name
    same = [c for c in copy if c["dtype"] == dtype]
    if not same:
        raise KeyError(f"no copy ceiling measured for {dtype}")
    target = math.log2(max(min(int(elements), COPY_MAX_ELEMENTS), 1))
    return min(same, key=lambda c: (abs(math.log2(c["elements"]) - target), -c["gbps"]))


def compile_all(jobs, threads: int):
    """jobs: {key: (fn, avals)} -> {key: compiled}. Lowering (Python) runs here, one at a
    time; XLA/Triton compilation, which releases the GIL, runs in parallel threads."""
    lowered = {k: jax.jit(fn).lower(*avals) for k, (fn, avals) in jobs.items()}
    out = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        futures = {k: pool.submit(low.compile) for k, low in lowered.items()}
        for k, f in futures.items():
            try:
                out[k] = f.result()
            except Exception as err:  # e.g. a thread-safety problem: compile it again, alone
                print(f"# parallel compile of {k} failed ({type(err).__name__}: {err}); "
                      "retrying serially", flush=True)
                out[k] = lowered[k].compile()
    return out


def git_commit() -> str:
    """The short commit of the checkout this package runs from, or ``"unknown"``."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10,
        ).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def on_gpu() -> bool:
    return jax.default_backend() in ("gpu", "cuda", "rocm")


def machine_info() -> dict:
    """What every result carries: date, machine, device, jax/jaxlib/python versions, commit."""
    import jaxlib

    dev = jax.devices()[0]
    return dict(
        date=time.strftime("%Y-%m-%d"),
        machine=platform.platform(),
        processor=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        platform=jax.default_backend(),
        device=dev.device_kind if on_gpu() else "CPU",
        device_count=jax.device_count(),
        jax=jax.__version__,
        jaxlib=getattr(jaxlib, "__version__", "unknown"),
        python=platform.python_version(),
        commit=git_commit(),
    )
