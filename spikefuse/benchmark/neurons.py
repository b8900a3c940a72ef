"""The neuron suite: multi-step LIF, fused kernels vs ``lax.scan``, against expert plain JAX.

LIF (tau=2, hard reset, Sigmoid surrogate), loss through spikes and v_final, ``fwd`` and
``fwd+bwd``. Rows:

* ``fused``: the ``"pallas"`` kernels (or ``"interpret"`` when asked);
* ``scan-u1``/``scan-u8``/``scan-u32``: our reference backend (``lax.scan`` of the step,
  spike by ``spikefuse.fire``) with that unroll;
* ``jax-u1``/``jax-u8``/``jax-u32``: what an expert writes in plain JAX (`expert_lif`): a
  ``lax.scan`` whose spike is a ``jax.custom_vjp`` with the closed-form sigmoid gradient.

Every speed-up is stated against the best ``jax-u*`` row of the same case, dtype and mode
(``speedup_vs_best_jax``); ``speedup_vs_best_scan`` and ``speedup_vs_reference`` (scan-u1)
are kept in the JSON. ``residual_bytes_per_step``: what ``jax.vjp`` keeps for the backward
beyond the inputs, per neuron-step, counted by ``benchmark.memory`` for every row.

Bytes counted per neuron-step are the fused kernels' traffic (b = element size, K = chunk;
per-neuron terms such as v0, v_final, dv0 divided by T):
    fwd      read x, write spikes:                          2b
    fwd+bwd  + checkpoints (written, read back): 2*4/K; bwd reads x and the spike
             cotangent, writes dx:                          5b + 8/K
The same count divides every row's time, so GB/s and "% copy" of a lax.scan row are an
effective rate (XLA moves more bytes than that). The ceiling (``CEILING``): x + 1 over T*N
elements for fwd; for fwd+bwd, x + 1 then a + b (the forward's read and write, then the
backward's two reads and a write), at the case's size, timed in turns with the rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import spikefuse.neurons as sn
from spikefuse.benchmark.memory import residual_bytes
from spikefuse.benchmark.timing import (ceiling_calls, ceiling_records, pct_of_ceiling,
                                       time_interleaved)
from spikefuse.kernels import scan

M = 1 << 20
CASES = [(8, 4 * M), (32, 4 * M), (64, 65536), (128, M), (1024, 4096)]  # (T, N), GPU sizes
QUICK_CASES = [(32, 16384), (256, 1024)]  # CPU-sized
UNROLLS = (1, 8, 32)
MODES = ("fwd", "fwd+bwd")
CEILING = {"fwd": "1r1w", "fwd+bwd": "1r1w+2r1w"}  # kernels of timing.STREAMS
NEURON = dict(tau=2.0, v_threshold=1.0, v_reset=0.0, decay_input=True)
ALPHA = 4.0  # the Sigmoid surrogate's default, which the library rows use


# -- the expert's plain-JAX LIF ----------------------------------------------------------
@jax.custom_vjp
def _spike(u):
    """H(u); its backward is the closed-form Sigmoid(alpha=ALPHA) derivative at the saved u."""
    return (u >= 0).astype(u.dtype)


def _spike_fwd(u):
    return _spike(u), u


def _spike_bwd(u, ct):
    sg = jax.nn.sigmoid(ALPHA * u)
    return (ct * (ALPHA * sg * (1.0 - sg)),)


_spike.defvjp(_spike_fwd, _spike_bwd)


def expert_lif(x, *, unroll: int, tau=2.0, v_threshold=1.0, v_reset=0.0):
    """LIF over ``x`` ``[T, *shape]`` as an expert writes it in plain JAX (the baseline).

    The step of ``NEURON`` (decay_input, hard reset) in a ``lax.scan`` with ``unroll``; the
    state in f32 (f64 for f64 input); the spike a ``custom_vjp`` Heaviside whose backward
    is ALPHA·σ(ALPHA·u)(1 − σ(ALPHA·u)). Returns ``(spikes, v_final)`` in x's dtype.
    """
    cdt = jnp.promote_types(x.dtype, jnp.float32)
    inv_tau = 1.0 / tau

    def step(v, x_t):
        h = v + (x_t.astype(cdt) - (v - v_reset)) * inv_tau
        s = _spike(h - v_threshold)
        return h * (1.0 - s) + v_reset * s, s.astype(x.dtype)

    v0 = jnp.full(x.shape[1:], v_reset, cdt)
    v_T, s = jax.lax.scan(step, v0, x, unroll=unroll)
    return s, v_T.astype(x.dtype)


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
    """f(x, ct_s, ct_v): the forward, or forward + vjp to x (loss through s and v).
    ``backend="jax"`` is `expert_lif` (plain JAX, ``NEURON``'s parameters) with ``unroll``."""
    if backend == "jax":
        if neuron is not None:
            raise ValueError("the plain-JAX baseline runs NEURON's parameters only")
        forward = lambda x: expert_lif(x, unroll=unroll)  # noqa: E731
    else:
        kw = dict(NEURON if neuron is None else neuron, backend=backend, unroll=unroll,
                  config=config)
        forward = lambda x: sn.lif(x, **kw)  # noqa: E731
    if mode == "fwd":
        return lambda x, ct_s, ct_v: forward(x)

    def fwd_bwd(x, ct_s, ct_v):
        out, pullback = jax.vjp(forward, x)
        return out, pullback((ct_s, ct_v))[0]

    return fwd_bwd


def random_inputs(T, N, dtype, seed=0):
    kx, ks, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = (jax.random.normal(kx, (T, N), jnp.float32) * 0.8 + 0.6).astype(dtype)
    ct_s = jax.random.normal(ks, (T, N), jnp.float32).astype(dtype)
    ct_v = jax.random.normal(kv, (N,), jnp.float32).astype(dtype)
    return x, ct_s, ct_v


def row_labels(kernel_backend: str | None) -> list[str]:
    return ((["fused"] if kernel_backend else []) + [f"scan-u{u}" for u in UNROLLS]
            + [f"jax-u{u}" for u in UNROLLS])


def _label_fn(label, mode, kernel_backend, unrolls, config):
    if label == "fused":
        return make_fn(mode, kernel_backend, config=config)
    kind, u = label.split("-u")
    return make_fn(mode, "reference" if kind == "scan" else "jax", unroll=unrolls[int(u)])


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
                for label in row_labels(kernel_backend):
                    out[(T, N, dt.name, mode, label)] = (
                        _label_fn(label, mode, kernel_backend, unrolls, config), avals)
    return out


def kept_bytes_per_step(fn, T, N, dt) -> float:
    """What ``jax.vjp`` of ``fn``'s forward keeps beyond its input x, per neuron-step."""
    x = jax.ShapeDtypeStruct((T, N), jnp.dtype(dt))
    return residual_bytes(lambda x: fn(x, None, None), x, exclude_inputs=True, per=T * N)


def make_row(T, N, dt, mode, label, sec, lo, hi, *, copy, config=None, kernel_backend=None,
             meta=None, residual=None) -> dict:
    """One self-describing row; ``copy``: the run's ceiling records (those of T*N elements
    are used); ``residual``: bytes per neuron-step kept for the backward."""
    dt = jnp.dtype(dt)
    config = config or scan.default_config(T, N, dt)
    nbytes = fused_bytes(T, N, dt.itemsize, config.chunk, mode)  # scan rows: effective rate
    row = dict(meta or {}, suite="neurons", op="lif", shape=f"T={T} N={N}", T=T, N=N,
               backend=label, mode=mode, dtype=dt.name, elements=T * N, ms=sec * 1e3,
               ms_min=lo * 1e3, ms_max=hi * 1e3, elements_per_s=T * N / sec, bytes=nbytes,
               bytes_per_step=nbytes / (T * N), gbps=nbytes / sec / 1e9,
               ceiling=CEILING[mode])
    row["pct_copy"] = pct_of_ceiling(row, copy)
    if residual is not None:
        row["residual_bytes_per_step"] = residual
    if label == "fused":
        row["kernel_backend"] = kernel_backend
        row["config"] = str(config)
    return row


def add_speedups(group: list[dict]) -> None:
    """Speed-ups within one (case, dtype, mode): over the best plain-JAX row, the best
    reference scan and scan-u1 (the reference at unroll 1)."""
    best_jax = min(r["ms"] for r in group if r["backend"].startswith("jax-"))
    best_scan = min(r["ms"] for r in group if r["backend"].startswith("scan-"))
    u1 = next(r["ms"] for r in group if r["backend"] == "scan-u1")
    for r in group:
        r["speedup_vs_best_jax"] = best_jax / r["ms"]
        r["speedup_vs_best_scan"] = best_scan / r["ms"]
        r["speedup_vs_unroll1"] = r["speedup_vs_reference"] = u1 / r["ms"]


def time_all(compiled, cases, dtypes, kernel_backend, *, copy, samples, min_sample_s,
             config=None, modes=MODES, progress=None, meta=None, after_case=None,
             unrolls=None) -> list[dict]:
    """Times the compiled functions of ``jobs``, a case's (every mode and label) and its
    ceiling kernels (``CEILING``) in turns (``timing.time_interleaved``); their records are
    appended to ``copy``. Each row gets `add_speedups`' ratios and, for fwd+bwd, the
    residual bytes per neuron-step its backward keeps."""
    unrolls = unrolls or {u: u for u in UNROLLS}
    rows = []
    for T, N in cases:
        for dt in map(jnp.dtype, dtypes):
            args = random_inputs(T, N, dt)
            calls = {(mode, label): (compiled[(T, N, dt.name, mode, label)], args)
                     for mode in modes for label in row_labels(kernel_backend)}
            calls.update(ceiling_calls([CEILING[m] for m in modes], T * N, dt))
            times = time_interleaved(calls, samples=samples, min_sample_s=min_sample_s)
            copy += ceiling_records(times)
            for mode in modes:
                group = []
                for label in row_labels(kernel_backend):
                    residual = None
                    if mode == "fwd+bwd":
                        fwd = _label_fn(label, "fwd", kernel_backend, unrolls, config)
                        residual = kept_bytes_per_step(fwd, T, N, dt)
                    group.append(make_row(T, N, dt, mode, label, *times[(mode, label)],
                                          copy=copy, config=config,
                                          kernel_backend=kernel_backend, meta=meta,
                                          residual=residual))
                    if progress:
                        progress(group[-1])
                add_speedups(group)
                rows += group
            del args, calls
        if after_case:
            after_case(T, N, rows)
    return rows


def compile_all_jobs(cases, dtypes, kernel_backend, *, threads, unrolls=None, config=None):
    """Compiles (in parallel) every function ``time_all`` times."""
    from spikefuse.benchmark.timing import compile_all

    return compile_all(jobs(cases, dtypes, kernel_backend, unrolls=unrolls, config=config),
                       threads)
