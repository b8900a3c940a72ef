"""The neuron suite: multi-step LIF, the fused scan kernels vs ``lax.scan`` (unroll 1, 8, 32).

LIF (tau=2, hard reset, Sigmoid surrogate), loss through spikes and v_final, ``fwd`` and
``fwd+bwd``. Rows: ``fused`` (the ``"pallas"`` kernels, or ``"interpret"`` when asked) and
``scan-u1``/``scan-u8``/``scan-u32`` (the reference backend's ``lax.scan``); each row carries
its speed-up over ``scan-u1`` (the reference) and over the best of the scan rows.

Bytes counted per neuron-step are the fused kernels' traffic (b = element size, K = chunk;
per-neuron terms such as v0, v_final, dv0 divided by T):
    fwd      read x, write spikes:                          2b
    fwd+bwd  + checkpoints (written, read back): 2*4/K; bwd reads x and the spike
             cotangent, writes dx:                          5b + 8/K
The same count divides every row's time, so GB/s and "% copy" of a lax.scan row are an
effective rate (XLA moves more bytes than that).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import spikefuse.neurons as sn
from spikefuse.benchmark.timing import time_fn
from spikefuse.kernels import scan

M = 1 << 20
CASES = [(8, 4 * M), (32, 4 * M), (64, 65536), (128, M), (1024, 4096)]  # (T, N), GPU sizes
QUICK_CASES = [(32, 16384), (256, 1024)]  # CPU-sized
UNROLLS = (1, 8, 32)
MODES = ("fwd", "fwd+bwd")
COPY_ELEMENTS = 1 << 27
NEURON = dict(tau=2.0, v_threshold=1.0, v_reset=0.0, decay_input=True)


def fused_bytes(T: int, N: int, itemsize: int, chunk: int, mode: str) -> float:
    """Bytes the fused kernels move for (T, N), counted from their design (kernels/scan.py)."""
    b = itemsize
    n_ck = scan.num_checkpoints(T, chunk)
    primal = T * N * 2 * b + N * (4 + b)  # x in, spikes out; v0 in, v_final out
    if mode == "fwd":
        return primal
    fwd = primal + n_ck * N * 4  # + checkpoints
    bwd = T * N * 3 * b + n_ck * N * 4 + N * (4 + b + 4)  # x, ds in, dx out; ck; v0, dv_T, dv0
    return fwd + bwd


def make_fn(mode, backend, *, unroll=None, config=None, neuron=None):
    """f(x, ct_s, ct_v): the forward, or forward + vjp to x (loss through s and v)."""
    kw = dict(NEURON if neuron is None else neuron, backend=backend, unroll=unroll,
              config=config)
    if mode == "fwd":
        return lambda x, ct_s, ct_v: sn.lif(x, **kw)

    def fwd_bwd(x, ct_s, ct_v):
        out, pullback = jax.vjp(lambda x: sn.lif(x, **kw), x)
        return out, pullback((ct_s, ct_v))[0]

    return fwd_bwd


def random_inputs(T, N, dtype, seed=0):
    kx, ks, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = (jax.random.normal(kx, (T, N), jnp.float32) * 0.8 + 0.6).astype(dtype)
    ct_s = jax.random.normal(ks, (T, N), jnp.float32).astype(dtype)
    ct_v = jax.random.normal(kv, (N,), jnp.float32).astype(dtype)
    return x, ct_s, ct_v


def row_labels(kernel_backend: str | None) -> list[str]:
    return (["fused"] if kernel_backend else []) + [f"scan-u{u}" for u in UNROLLS]


def jobs(cases, dtypes, kernel_backend: str | None, *, unrolls=None, config=None,
         modes=MODES) -> dict:
    """{(T, N, dtype, mode, label): (fn, avals)} for every timed function. ``unrolls`` maps
    a label's unroll (1, 8, 32) to the one actually used (CPU smoke runs shrink them)."""
    unrolls = unrolls or {u: u for u in UNROLLS}
    out = {}
    for T, N in cases:
        for dt in map(jnp.dtype, dtypes):
            avals = (jax.ShapeDtypeStruct((T, N), dt), jax.ShapeDtypeStruct((T, N), dt),
                     jax.ShapeDtypeStruct((N,), dt))
            for mode in modes:
                if kernel_backend:
                    out[(T, N, dt.name, mode, "fused")] = (
                        make_fn(mode, kernel_backend, config=config), avals)
                for u in UNROLLS:
                    out[(T, N, dt.name, mode, f"scan-u{u}")] = (
                        make_fn(mode, "reference", unroll=unrolls[u]), avals)
    return out


def make_row(T, N, dt, mode, label, sec, lo, hi, *, copy, config=None, kernel_backend=None,
             meta=None) -> dict:
    """One self-describing row; ``copy`` maps dtype name -> the copy-ceiling record."""
    dt = jnp.dtype(dt)
    config = config or scan.default_config(T, N, dt)
    nbytes = fused_bytes(T, N, dt.itemsize, config.chunk, mode)  # scan rows: effective rate
    row = dict(meta or {}, suite="neurons", op="lif", shape=f"T={T} N={N}", T=T, N=N,
               backend=label, mode=mode, dtype=dt.name, elements=T * N, ms=sec * 1e3,
               ms_min=lo * 1e3, ms_max=hi * 1e3, elements_per_s=T * N / sec, bytes=nbytes,
               bytes_per_step=nbytes / (T * N), gbps=nbytes / sec / 1e9)
    row["pct_copy"] = 100 * row["gbps"] / copy[dt.name]["gbps"]
    if label == "fused":
        row["kernel_backend"] = kernel_backend
        row["config"] = str(config)
        row["residual_bytes_per_step"] = (scan.residual_bytes_per_step(T, config.chunk)
                                          if mode == "fwd+bwd" else 0.0)
    return row


def time_all(compiled, cases, dtypes, kernel_backend, *, copy, samples, min_sample_s,
             config=None, modes=MODES, progress=None, meta=None, after_case=None) -> list[dict]:
    """Times the compiled functions of ``jobs``; adds ``speedup_vs_reference`` (over
    scan-u1), ``speedup_vs_unroll1`` (the same) and ``speedup_vs_best_scan``."""
    rows = []
    for T, N in cases:
        for dt in map(jnp.dtype, dtypes):
            args = random_inputs(T, N, dt)
            for mode in modes:
                group = []
                for label in row_labels(kernel_backend):
                    sec, lo, hi = time_fn(compiled[(T, N, dt.name, mode, label)], args,
                                          samples=samples, min_sample_s=min_sample_s)
                    group.append(make_row(T, N, dt, mode, label, sec, lo, hi, copy=copy,
                                          config=config, kernel_backend=kernel_backend,
                                          meta=meta))
                    if progress:
                        progress(group[-1])
                best = min(r["ms"] for r in group if r["backend"].startswith("scan"))
                u1 = next(r["ms"] for r in group if r["backend"] == "scan-u1")
                for r in group:
                    r["speedup_vs_best_scan"] = best / r["ms"]
                    r["speedup_vs_unroll1"] = r["speedup_vs_reference"] = u1 / r["ms"]
                rows += group
            del args
        if after_case:
            after_case(T, N, rows)
    return rows


def compile_all_jobs(cases, dtypes, kernel_backend, *, threads, unrolls=None, config=None):
    """Compiles (in parallel) every function ``time_all`` times."""
    from spikefuse.benchmark.timing import compile_all

    return compile_all(jobs(cases, dtypes, kernel_backend, unrolls=unrolls, config=config),
                       threads)
