"""The elementwise suite: ``fire(v, 0.5, Shape())`` for every built-in shape × backend × mode.

Modes (the same ops the tests differentiate):
  ``fwd``      the spike H(v − θ);
  ``bwd``      the pullback of a random cotangent (forward recomputed inside, as XLA sees it);
  ``fwd+bwd``  both in one function: XLA sees the cotangent before the forward runs, so the
               reference can fuse both passes into one read of v;
  ``fwd;bwd``  both, with an optimization barrier between them, as in training, where the
               cotangent comes from the loss after the forward.
Bytes counted per element (e = element size): fwd 2e (read v, write spikes), bwd 3e (read v
and the cotangent, write dv), fwd+bwd and fwd;bwd 5e (the two passes). The ceiling of each
mode (``CEILING``) is the streaming kernel(s) of ``timing.STREAMS`` with the same reads and
writes, one after the other for two passes, at the case's size, timed in turns with the
rows. Where XLA fuses fwd+bwd into one pass over v (on a GPU; XLA:CPU runs two loops) it
moves 4e and can read up to 125 % of that ceiling.

Backends: the library's ``"reference"``, ``"pallas"`` (GPU), ``"interpret"`` (the kernels
interpreted; timings meaningless) and, when it is importable, ``"braintools"``
(``braintools.surrogate.<Name>()(v − θ)`` — the baseline imported, never re-implemented).
"""

from __future__ import annotations

import dataclasses
import importlib

import jax
import jax.numpy as jnp

import spikefuse
from spikefuse.benchmark.timing import (
    ceiling_calls,
    ceiling_records,
    compile_all,
    on_accelerator,
    pct_of_ceiling,
    time_interleaved,
)
from spikefuse.surrogate import registry

MODES = ("fwd", "bwd", "fwd+bwd", "fwd;bwd")
BYTES_PER_ELEMENT = {"fwd": 2, "bwd": 3, "fwd+bwd": 5, "fwd;bwd": 5}  # × itemsize
CEILING = {"fwd": "1r1w", "bwd": "2r1w", "fwd+bwd": "1r1w+2r1w", "fwd;bwd": "1r1w+2r1w"}
BACKENDS = ("reference", "pallas", "interpret", "braintools")
THRESHOLD = 0.5


def braintools_surrogate():
    """``braintools.surrogate`` if importable, else ``None`` (it is never required)."""
    try:
        return importlib.import_module("braintools.surrogate")
    except Exception:  # ImportError, or a broken install of an optional baseline
        return None


def available_backends() -> list[str]:
    """Backends that give meaningful timings here: reference, pallas on GPU or TPU,
    braintools."""
    out = ["reference"]
    if on_accelerator():
        out.append("pallas")
    if braintools_surrogate() is not None:
        out.append("braintools")
    return out


def unavailable_reason(backend: str) -> str | None:
    """Why ``backend`` cannot run here, or ``None`` when it can."""
    if backend not in BACKENDS:
        return f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})"
    if backend == "pallas" and not on_accelerator():
        return ("'pallas' needs a GPU or a TPU (use 'interpret' to run the kernels "
                "interpreted on CPU)")
    if backend == "braintools" and braintools_surrogate() is None:
        return "'braintools' is not importable here (pip install braintools, Python >= 3.12)"
    return None


@dataclasses.dataclass(frozen=True)
class Case:
    """One shape at one size and dtype — the same (shape, dtype) grid the tests cover."""

    shape: str
    elements: int
    dtype: str

    def inputs(self, seed: int = 0):
        kv, kc = jax.random.split(jax.random.PRNGKey(seed))
        dt = jnp.dtype(self.dtype)
        v = jax.random.normal(kv, (self.elements,), jnp.float32).astype(dt)
        ct = jax.random.normal(kc, (self.elements,), jnp.float32).astype(dt)
        return v, ct


def cases(shapes=None, dtypes=("float32",), elements: int = 1 << 16) -> list[Case]:
    """Cases for shape names (default: all built-in shapes) × dtypes at ``elements``."""
    names = [registry.spec(s).name for s in shapes] if shapes else registry.names()
    return [Case(s, elements, jnp.dtype(d).name) for d in dtypes for s in names]


def spike_fn(shape: str, backend: str):
    """v -> spikes of ``shape`` at default parameters, threshold 0.5, on ``backend``."""
    if backend == "braintools":
        bt = getattr(braintools_surrogate(), shape)()
        return lambda v: bt(v - jnp.asarray(THRESHOLD, v.dtype))
    s = registry.spec(shape).cls()
    return lambda v: spikefuse.fire(v, THRESHOLD, s, backend=backend)

def make_ops(shape: str, backend: str) -> dict:
    """{mode: f(v, ct)} — the functions timed (jit them, or compile with ``compile_all``)."""
    spike = spike_fn(shape, backend)

    def fwd(v, ct):
        return spike(v)

    def bwd(v, ct):
        return jax.vjp(spike, v)[1](ct)[0]

    def fwd_bwd(v, ct):
        y, vjp = jax.vjp(spike, v)
        return y, vjp(ct)[0]

    def fwd_then_bwd(v, ct):
        # As in training, the cotangent is only known after the forward has run: the
        # barrier stops XLA from fusing the backward into the forward's pass over v.
        y, vjp = jax.vjp(spike, v)
        y, ct = jax.lax.optimization_barrier((y, ct))
        return y, vjp(ct)[0]

    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd_bwd, "fwd;bwd": fwd_then_bwd}


def run(case_list, backends, *, modes=MODES, copy: list, samples: int, min_sample_s: float,
        threads: int = 1, progress=None, meta: dict | None = None) -> list[dict]:
    """Times every case × backend × mode; returns one self-describing row per measurement.

    A case's functions and the ceiling kernels of its modes (``CEILING``) are timed in
    turns (``timing.time_interleaved``); their records are appended to ``copy`` (the run's
    ceilings) and each row is compared with the fastest of its size so far.
    ``progress`` (optional) is called once per row. Compilation is done first, in
    parallel, and excluded from the timings.
    """
    meta = meta or {}
    rows = []
    for case in case_list:
        jobs = {}
        dt = jnp.dtype(case.dtype)
        aval = jax.ShapeDtypeStruct((case.elements,), dt)
        for backend in backends:
            ops = make_ops(case.shape, backend)
            for mode in modes:
                jobs[(backend, mode)] = (ops[mode], (aval, aval))
        compiled = compile_all(jobs, threads)
        args = case.inputs()
        calls = {key: (fn, args) for key, fn in compiled.items()}
        calls.update(ceiling_calls([CEILING[m] for m in modes], case.elements, dt))
        times = time_interleaved(calls, samples=samples, min_sample_s=min_sample_s)
        copy += ceiling_records(times)
        ref = {}
        for backend in backends:
            for mode in modes:
                med, lo, hi = times[(backend, mode)]
                nbytes = BYTES_PER_ELEMENT[mode] * dt.itemsize * case.elements
                row = dict(meta, suite="elementwise", op=f"fire[{case.shape}]", shape=case.shape,
                           backend=backend, mode=mode, dtype=dt.name, elements=case.elements,
                           ms=med * 1e3, ms_min=lo * 1e3, ms_max=hi * 1e3,
                           elements_per_s=case.elements / med, bytes=nbytes,
                           gbps=nbytes / med / 1e9, ceiling=CEILING[mode])
                row["pct_copy"] = pct_of_ceiling(row, copy)
                if backend == "reference":
                    ref[mode] = med
                if mode in ref:
                    row["speedup_vs_reference"] = ref[mode] / med
                rows.append(row)
                if progress:
                    progress(row)
        del args, compiled, calls
    return rows
