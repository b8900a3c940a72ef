"""The neuron suite: multi-step neurons, fused kernels vs ``lax.scan``, against plain JAX.

One or more neurons of `NEURONS` (``--neurons``; default LIF: tau=2, hard reset, Sigmoid
surrogate): the built-ins IF, LIF, PLIF, ALIF and the AdEx step of ``examples/adex.py``
(a user's step on the engine), loss through spikes and the final state, ``fwd`` and
``fwd+bwd``. Rows:

* ``fused``: the ``"pallas"`` kernels (or ``"interpret"`` when asked);
* ``scan-u1``/``scan-u8``/``scan-u32``: our reference backend (``lax.scan`` of the step,
  spike by ``spikefuse.fire``) with that unroll;
* ``jax-u1``/``jax-u8``/``jax-u32`` (LIF): what an expert writes in plain JAX
  (`expert_lif`): a ``lax.scan`` whose spike is a ``jax.custom_vjp`` with the closed-form
  sigmoid gradient.

Every speed-up is stated against the best plain-JAX row of the same neuron, case, dtype and
mode (``speedup_vs_baseline``; the ``jax-u*`` rows for LIF, the ``scan-u*`` rows — a plain
``lax.scan`` of the same step — for the others), also kept as ``speedup_vs_best_jax`` (LIF),
``speedup_vs_best_scan`` and ``speedup_vs_reference`` (scan-u1) in the JSON.
``residual_bytes_per_step``: what ``jax.vjp`` keeps for the backward beyond the inputs, per
neuron-step, counted by ``benchmark.memory`` for every row.

Bytes counted per neuron-step are the fused kernels' traffic (b = element size, K = chunk,
m = state leaves, c = 4 bytes of f32 state; per-neuron terms such as the initial and final
states divided by T):
    fwd      read x, write spikes:                          2b
    fwd+bwd  + checkpoints (written, read back): 2·m·c/K; bwd reads x and the spike
             cotangent, writes dx:                          5b + 2·m·c/K
The same count divides every row's time, so GB/s and "% copy" of a lax.scan row are an
effective rate (XLA moves more bytes than that). The ceiling (``CEILING``): x + 1 over T*N
elements for fwd; for fwd+bwd, x + 1 then a + b (the forward's read and write, then the
backward's two reads and a write), at the case's size, timed in turns with the rows.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

import spikefuse.neurons as sn
from spikefuse import surrogate as sg
from spikefuse.benchmark.memory import residual_bytes
from spikefuse.benchmark.timing import (
    ceiling_calls,
    ceiling_records,
    pct_of_ceiling,
    time_interleaved,
)
from spikefuse.kernels import scan
from spikefuse.neurons import engine

M = 1 << 20
CASES = [(8, 4 * M), (32, 4 * M), (64, 65536), (128, M), (1024, 4096)]  # (T, N), GPU sizes
QUICK_CASES = [(32, 16384), (256, 1024)]  # CPU-sized
UNROLLS = (1, 8, 32)
MODES = ("fwd", "fwd+bwd")
CEILING = {"fwd": "1r1w", "fwd+bwd": "1r1w+2r1w"}  # kernels of timing.STREAMS
NEURON: dict[str, Any] = dict(tau=2.0, v_threshold=1.0, v_reset=0.0, decay_input=True)
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


# -- the neurons the suite times ----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Neuron:
    """A neuron the suite can time.

    Attributes:
      name: its ``--neurons`` name.
      title: the table's heading.
      n_state: m, state leaves (checkpointed by the fused kernels).
      run: ``run(x, backend, unroll, config) -> (spikes, final_state)``.
      input_scale, input_shift: x = normal(0.6, 0.8) * scale + shift (currents in the
        neuron's own units, so that it fires).
      expert: has the plain-JAX rows (``jax-u*``, `expert_lif`).
    """

    name: str
    title: str
    n_state: int
    run: Callable
    input_scale: float = 1.0
    input_shift: float = 0.0
    expert: bool = False


EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


@functools.cache
def example_step(module: str, name: str) -> Callable:
    """A step function from ``examples/<module>.py`` (a source checkout's), as a user runs it."""
    path = EXAMPLES / f"{module}.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the {module} neuron is an example step, "
                                "benchmarked from a source checkout of spikefuse")
    spec = importlib.util.spec_from_file_location(f"spikefuse_example_{module}", path)
    assert spec is not None and spec.loader is not None, path
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, name)


def _adex(x, backend, unroll, config):
    return engine.run(example_step("adex", "adex_step"), x, (-70.0, 0.0),
                      surrogate=sg.GaussianGrad(sigma=0.5), backend=backend, unroll=unroll,
                      config=config)


NEURONS = {n.name: n for n in (
    Neuron("if", "IF (hard reset, Sigmoid)", 1,
           lambda x, b, u, c: sn.integrate_fire(x, backend=b, unroll=u, config=c)),
    Neuron("lif", "LIF (tau=2, hard reset, Sigmoid)", 1,
           lambda x, b, u, c: sn.lif(x, **NEURON, backend=b, unroll=u, config=c), expert=True),
    Neuron("plif", "PLIF (w=0: tau=2, hard reset, Sigmoid)", 1,
           lambda x, b, u, c: sn.plif(x, w=0.0, backend=b, unroll=u, config=c)),
    Neuron("alif", "ALIF (tau=2, tau_a=20, beta=1.8, hard reset, Sigmoid)", 2,
           lambda x, b, u, c: sn.alif(x, backend=b, unroll=u, config=c)),
    Neuron("adex", "AdEx (examples/adex.py: a user step, GaussianGrad)", 2, _adex,
           input_scale=25.0, input_shift=-45.0),
)}


def fused_bytes(T: int, N: int, itemsize: int, chunk: int, mode: str,
                n_state: int = 1) -> float:
    """Bytes the fused kernels move for (T, N) with ``n_state`` state leaves, counted from
    their design (kernels/scan.py)."""
    b, m = itemsize, n_state
    n_ck = scan.num_checkpoints(T, chunk)
    primal = T * N * 2 * b + m * N * (4 + b)  # x in, spikes out; initial in, final out
    if mode == "fwd":
        return primal
    fwd = primal + m * n_ck * N * 4  # + checkpoints
    # x, ds in, dx out; checkpoints; per leaf: initial, final cotangent, initial gradient
    bwd = T * N * 3 * b + m * n_ck * N * 4 + m * N * (4 + b + 4)
    return fwd + bwd


def make_fn(mode, backend, *, unroll=None, config=None, neuron=None, model="lif"):
    """f(x, ct_s, ct_v): the forward, or forward + vjp to x (loss through the spikes and
    every final state leaf, each with cotangent ct_v) of the neuron ``model`` of `NEURONS`.
    ``neuron``: LIF parameters instead of ``NEURON``'s. ``backend="jax"`` is `expert_lif`
    (plain JAX, ``NEURON``'s parameters) with ``unroll``."""
    if backend == "jax":
        if neuron is not None or model != "lif":
            raise ValueError("the plain-JAX baseline runs NEURON's LIF only")
        forward = lambda x: expert_lif(x, unroll=unroll)  # noqa: E731
    elif neuron is not None:
        if model != "lif":
            raise ValueError("neuron= sets LIF parameters")
        kw = dict(neuron, backend=backend, unroll=unroll, config=config)
        forward = lambda x: sn.lif(x, **kw)  # noqa: E731
    else:
        run = NEURONS[model].run
        forward = lambda x: run(x, backend, unroll, config)  # noqa: E731
    if mode == "fwd":
        return lambda x, ct_s, ct_v: forward(x)

    def fwd_bwd(x, ct_s, ct_v):
        (s, state), pullback = jax.vjp(forward, x)
        return (s, state), pullback((ct_s, jax.tree.map(lambda _: ct_v, state)))[0]

    return fwd_bwd


def random_inputs(T, N, dtype, seed=0, model="lif"):
    n = NEURONS[model]
    kx, ks, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = ((jax.random.normal(kx, (T, N), jnp.float32) * 0.8 + 0.6) * n.input_scale
         + n.input_shift).astype(dtype)
    ct_s = jax.random.normal(ks, (T, N), jnp.float32).astype(dtype)
    ct_v = jax.random.normal(kv, (N,), jnp.float32).astype(dtype)
    return x, ct_s, ct_v


def row_labels(kernel_backend: str | None, model: str = "lif") -> list[str]:
    return ((["fused"] if kernel_backend else []) + [f"scan-u{u}" for u in UNROLLS]
            + ([f"jax-u{u}" for u in UNROLLS] if NEURONS[model].expert else []))


def _label_fn(label, mode, kernel_backend, unrolls, config, model="lif"):
    if label == "fused":
        return make_fn(mode, kernel_backend, config=config, model=model)
    kind, u = label.split("-u")
    if kind == "jax":
        return make_fn(mode, "jax", unroll=unrolls[int(u)])
    return make_fn(mode, "reference", unroll=unrolls[int(u)], model=model)


def jobs(cases, dtypes, kernel_backend: str | None, *, unrolls=None, config=None,
         modes=MODES, model: str = "lif") -> dict:
    """{(T, N, dtype, mode, label): (fn, avals)} for every timed function of the neuron
    ``model``. ``unrolls`` maps a label's unroll (1, 8, 32) to the one actually used (CPU
    smoke runs shrink them)."""
    unrolls = unrolls or {u: u for u in UNROLLS}
    out = {}
    for T, N in cases:
        for dt in map(jnp.dtype, dtypes):
            avals = (jax.ShapeDtypeStruct((T, N), dt), jax.ShapeDtypeStruct((T, N), dt),
                     jax.ShapeDtypeStruct((N,), dt))
            for mode in modes:
                for label in row_labels(kernel_backend, model):
                    out[(T, N, dt.name, mode, label)] = (
                        _label_fn(label, mode, kernel_backend, unrolls, config, model), avals)
    return out


def kept_bytes_per_step(fn, T, N, dt) -> float:
    """What ``jax.vjp`` of ``fn``'s forward keeps beyond its input x, per neuron-step."""
    x = jax.ShapeDtypeStruct((T, N), jnp.dtype(dt))
    return residual_bytes(lambda x: fn(x, None, None), x, exclude_inputs=True, per=T * N)


def make_row(T, N, dt, mode, label, sec, lo, hi, *, copy, config=None, kernel_backend=None,
             meta=None, residual=None, model="lif") -> dict:
    """One self-describing row; ``copy``: the run's ceiling records (those of T*N elements
    are used); ``residual``: bytes per neuron-step kept for the backward."""
    dt = jnp.dtype(dt)
    config = config or scan.default_config(T, N, dt)
    nbytes = fused_bytes(T, N, dt.itemsize, config.chunk, mode,  # scan rows: effective rate
                         NEURONS[model].n_state)
    row = dict(meta or {}, suite="neurons", op=model, shape=f"T={T} N={N}", T=T, N=N,
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
    """Speed-ups within one (neuron, case, dtype, mode): over the baseline — the best
    plain-JAX row (``jax-u*`` where the neuron has them, else the best ``scan-u*``) —, the
    best reference scan and scan-u1 (the reference at unroll 1)."""
    jax_rows = [r["ms"] for r in group if r["backend"].startswith("jax-")]
    best_scan = min(r["ms"] for r in group if r["backend"].startswith("scan-"))
    u1 = next(r["ms"] for r in group if r["backend"] == "scan-u1")
    baseline = min(jax_rows) if jax_rows else best_scan
    for r in group:
        if jax_rows:
            r["speedup_vs_best_jax"] = min(jax_rows) / r["ms"]
        r["baseline"] = "jax-u*" if jax_rows else "scan-u*"
        r["speedup_vs_baseline"] = baseline / r["ms"]
        r["speedup_vs_best_scan"] = best_scan / r["ms"]
        r["speedup_vs_unroll1"] = r["speedup_vs_reference"] = u1 / r["ms"]


def time_all(compiled, cases, dtypes, kernel_backend, *, copy, samples, min_sample_s,
             config=None, modes=MODES, progress=None, meta=None, after_case=None,
             unrolls=None, model: str = "lif") -> list[dict]:
    """Times the compiled functions of ``jobs``, a case's (every mode and label) and its
    ceiling kernels (``CEILING``) in turns (``timing.time_interleaved``); their records are
    appended to ``copy``. Each row gets `add_speedups`' ratios and, for fwd+bwd, the
    residual bytes per neuron-step its backward keeps."""
    unrolls = unrolls or {u: u for u in UNROLLS}
    rows = []
    for T, N in cases:
        for dt in map(jnp.dtype, dtypes):
            args = random_inputs(T, N, dt, model=model)
            calls = {(mode, label): (compiled[(T, N, dt.name, mode, label)], args)
                     for mode in modes for label in row_labels(kernel_backend, model)}
            calls.update(ceiling_calls([CEILING[m] for m in modes], T * N, dt))
            times = time_interleaved(calls, samples=samples, min_sample_s=min_sample_s)
            copy += ceiling_records(times)
            for mode in modes:
                group = []
                for label in row_labels(kernel_backend, model):
                    residual = None
                    if mode == "fwd+bwd":
                        fwd = _label_fn(label, "fwd", kernel_backend, unrolls, config, model)
                        residual = kept_bytes_per_step(fwd, T, N, dt)
                    group.append(make_row(T, N, dt, mode, label, *times[(mode, label)],
                                          copy=copy, config=config,
                                          kernel_backend=kernel_backend, meta=meta,
                                          residual=residual, model=model))
                    if progress:
                        progress(group[-1])
                add_speedups(group)
                rows += group
            del args, calls
        if after_case:
            after_case(T, N, rows)
    return rows


def compile_all_jobs(cases, dtypes, kernel_backend, *, threads, unrolls=None, config=None,
                     model: str = "lif"):
    """Compiles (in parallel) every function ``time_all`` times."""
    from spikefuse.benchmark.timing import compile_all

    return compile_all(jobs(cases, dtypes, kernel_backend, unrolls=unrolls, config=config,
                            model=model), threads)
