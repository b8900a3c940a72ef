"""Timing and provenance shared by every benchmark (the CLI and the scripts in ``bench/``)."""

from __future__ import annotations

import concurrent.futures
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
    for _ in range(2):
        jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    one = time.perf_counter() - start
    inner = max(1, min(100, int(min_sample_s / max(one, 1e-7))))
    times = []
    for _ in range(max(1, samples)):
        start = time.perf_counter()
        for _ in range(inner):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / inner)
        del out
    return statistics.median(times), min(times), max(times)


def copy_ceiling(n: int, dtype, *, samples: int, min_sample_s: float) -> dict:
    """The bandwidth ceiling: ``x + 1`` over ``n`` elements (one read, one write), timed."""
    dtype = jnp.dtype(dtype)
    a = jnp.ones((n,), dtype)
    copy = jax.jit(lambda a: a + jnp.asarray(1, a.dtype))
    med, lo, hi = time_fn(copy, (a,), samples=samples, min_sample_s=min_sample_s)
    del a
    return dict(elements=n, dtype=dtype.name, ms=med * 1e3, ms_min=lo * 1e3, ms_max=hi * 1e3,
                gbps=2 * n * dtype.itemsize / med / 1e9)


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
