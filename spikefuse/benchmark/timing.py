"""Timing and provenance shared by every benchmark (the CLI and the scripts in ``bench/``)."""

from __future__ import annotations

import concurrent.futures
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable

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
    times: dict = {key: [] for key in calls}
    for _ in range(max(1, samples)):
        for key, (fn, args) in calls.items():
            start = time.perf_counter()
            for _ in range(inner[key]):
                out = fn(*args)
            jax.block_until_ready(out)
            times[key].append((time.perf_counter() - start) / inner[key])
            del out
    return {k: (statistics.median(t), min(t), max(t)) for k, t in times.items()}


# -- the bandwidth ceiling ------------------------------------------------------------
# A row is held against the simplest XLA kernels that read and write what the row counts
# per element, at the row's size, timed in turns with it. Which cache level holds the data
# decides the bandwidth on a CPU (a copy of 2^19 elements once read a ninth of what rows of
# 2^18 reached), and so does the mix of reads and writes (out of cache on the 2-core CPU
# here, a + b moved 1.4x the bytes per second of x + 1): one copy cannot bound every row.
STREAMS: dict[str, tuple[int, int, Callable]] = {  # name: (reads, writes) per element, the kernel
    "1r1w": (1, 1, lambda a: a + jnp.asarray(1, a.dtype)),
    "2r1w": (2, 1, lambda a, b: a + b),
}
COPY_MAX_ELEMENTS = 1 << 27  # `copy_ceilings` measures at most this many (past every cache)
COPY_MIN_SAMPLES = 15


def stream_call(op: str, n: int, dtype):
    """``(fn, args)``: the streaming kernel ``op`` (a key of ``STREAMS``) over ``n``
    elements."""
    reads, _, fn = STREAMS[op]
    return jax.jit(fn), tuple(jnp.full((n,), i + 1, jnp.dtype(dtype)) for i in range(reads))


def stream_record(op: str, n: int, dtype, med: float, lo: float, hi: float) -> dict:
    """A ceiling record from the kernel's timing (seconds per call). ``gbps`` is taken
    from the fastest sample, not the median: a ceiling is the best this device showed, so a
    row's median cannot pass it by the kernel's own noise; ``gbps_median`` is the median's."""
    dtype = jnp.dtype(dtype)
    reads, writes, _ = STREAMS[op]
    nbytes = (reads + writes) * n * dtype.itemsize
    return dict(op=op, elements=n, dtype=dtype.name, ms=med * 1e3, ms_min=lo * 1e3,
                ms_max=hi * 1e3, bytes=nbytes, gbps=nbytes / lo / 1e9,
                gbps_median=nbytes / med / 1e9)


def ceiling_calls(ceilings, n: int, dtype) -> dict:
    """``{(op, n, dtype name): (fn, args)}`` for every kernel named in ``ceilings`` (strings
    such as ``"1r1w+2r1w"``): to be timed in turns with the rows (`time_interleaved`)."""
    ops = dict.fromkeys(op for c in ceilings for op in c.split("+"))
    return {(op, n, jnp.dtype(dtype).name): stream_call(op, n, dtype) for op in ops}


def ceiling_records(times: dict) -> list[dict]:
    """Pops the `ceiling_calls` keys out of ``times`` (from `time_interleaved`) and
    returns their records."""
    keys = [k for k in times if isinstance(k, tuple) and len(k) == 3 and k[0] in STREAMS]
    return [stream_record(*k, *times.pop(k)) for k in keys]


def copy_ceilings(sizes, dtypes, *, samples: int, min_sample_s: float,
                  ops=("1r1w", "2r1w")) -> list[dict]:
    """The ceiling kernels ``ops`` timed on their own (at least ``COPY_MIN_SAMPLES``
    samples each) at every distinct size (capped at ``COPY_MAX_ELEMENTS``) and dtype."""
    out = []
    for d in dict.fromkeys(jnp.dtype(d).name for d in dtypes):
        for n in sorted({min(int(n), COPY_MAX_ELEMENTS) for n in sizes}):
            for op in ops:
                fn, args = stream_call(op, n, d)
                out.append(stream_record(op, n, d, *time_fn(
                    fn, args, samples=max(samples, COPY_MIN_SAMPLES), min_sample_s=min_sample_s)))
    return out


def best_ceilings(copy: list[dict]) -> list[dict]:
    """``copy`` with one record per (op, dtype, elements): the fastest of its measurements."""
    best: dict = {}
    for c in copy:
        key = (c["op"], c["dtype"], c["elements"])
        if key not in best or c["gbps"] > best[key]["gbps"]:
            best[key] = c
    return list(best.values())


def ceiling_for(copy: list[dict], op: str, dtype, elements: int) -> dict:
    """The record of kernel ``op`` for a row of ``elements`` in ``dtype``: the same size,
    else the nearest measured size (in log scale); of several measurements, the fastest."""
    dtype = jnp.dtype(dtype).name
    same = [c for c in copy if c["dtype"] == dtype and c["op"] == op]
    if not same:
        raise KeyError(f"no {op} ceiling measured for {dtype}")
    target = math.log2(max(int(elements), 1))
    return min(same, key=lambda c: (abs(math.log2(c["elements"]) - target), -c["gbps"]))


def ceiling_gbps(copy: list[dict], ceiling: str, dtype, elements: int) -> float:
    """The ceiling of a row: ``ceiling`` names the kernels that move what it counts, run
    one after the other (``"1r1w+2r1w"``): their bytes over the sum of their best times."""
    recs = [ceiling_for(copy, op, dtype, elements) for op in ceiling.split("+")]
    per_element = [(r["bytes"] / r["elements"], r["ms_min"] / 1e3 / r["elements"]) for r in recs]
    return sum(b for b, _ in per_element) / sum(t for _, t in per_element) / 1e9


def pct_of_ceiling(row: dict, copy: list[dict]) -> float:
    """``row``'s GB/s as a percentage of its ceiling (``row["ceiling"]``, of its dtype and
    size)."""
    return 100.0 * row["gbps"] / ceiling_gbps(copy, row["ceiling"], row["dtype"],
                                              row["elements"])


def compile_all(jobs, threads: int, lower=None):
    """jobs: {key: (fn, avals)} -> {key: compiled}. Lowering (Python) runs here, one at a
    time (``lower(fn, avals)``; default ``jax.jit(fn).lower(*avals)``); XLA/Triton
    compilation, which releases the GIL, runs in parallel threads."""
    lower = lower or (lambda fn, avals: jax.jit(fn).lower(*avals))
    lowered = {k: lower(fn, avals) for k, (fn, avals) in jobs.items()}
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


def on_accelerator() -> bool:
    """A GPU or a TPU: where ``"pallas"`` compiles (Triton or Mosaic kernels)."""
    return on_gpu() or jax.default_backend() == "tpu"


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
        device=dev.device_kind if on_accelerator() else "CPU",
        device_count=jax.device_count(),
        jax=jax.__version__,
        jaxlib=getattr(jaxlib, "__version__", "unknown"),
        python=platform.python_version(),
        commit=git_commit(),
    )
