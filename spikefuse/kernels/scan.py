"""Multi-step scan kernels: a neuron's forward and BPTT backward, one Pallas kernel each.

Generic over a *step* and a *grad function*; nothing here knows about neurons or surrogates:

* ``step(v, x, params, fire) -> (s, v_new)``: one time step of one state variable,
  elementwise jnp code (e.g. ``spikefuse.neurons.dynamics.Step``). ``fire(h, thr)`` is
  supplied by the kernel: H(h - thr) with derivative ``grad_fn(h - thr, *gparams)`` w.r.t. h
  (and its negation w.r.t. thr, 0 w.r.t. gparams).
* ``grad_fn(u, *gparams)``: the surrogate derivative g', a static hashable function.
The backward kernel differentiates ``step`` with ``jax.vjp`` inside the kernel body, so a
new neuron needs no hand-written gradient.

Data layout
-----------
The neurons ``*shape`` are flattened to N; every per-step array is ``[T, N]`` (time-major, a
free reshape of ``[T, *shape]``), per-neuron arrays are ``[N]``. Program i of the 1-D grid
``cdiv(N, block)`` owns neurons ``[i*block, (i+1)*block)`` for all T steps and runs the time
loop itself, with the state in f32 registers (the compute dtype: f32 for bf16/f16/f32, f64
for f64). Refs are ``(T, block)`` / ``(rows, block)`` / ``(block,)`` blocks; a row is one
masked 1-D load or store (the neuron tail is ragged; Triton does not mask plain ref
accesses, interpret mode pads with NaN). Scalar parameters travel as ``[1]`` arrays, so a
new value is a new operand, never a recompilation; per-neuron parameters as ``[N]``.

Time is processed in chunks of K = ``config.chunk`` steps: a statically unrolled loop issues
the chunk's K row loads, then runs the K dependent steps in registers, inside a
``fori_loop`` over the T // K full chunks; the T % K tail is a static, shorter chunk. The
loads of a chunk are independent, so each program keeps K rows in flight per stream instead
of one dependent round trip per step; ``config.prefetch`` additionally issues chunk c+1's
loads before computing chunk c (for few, long-running programs: small N, long T).

Saved for the backward
----------------------
Nothing per step beyond the outputs. The forward writes the spikes (x's dtype) and, for the
backward, the membrane at each chunk boundary: ``ck[c] = v`` at the start of chunk c + 1,
``[ceil(T/K) - 1, N]`` in the compute dtype (chunk 0 starts at v0). The backward walks the
chunks in reverse; for each it re-reads the K rows of x, recomputes the chunk's states from
its checkpoint in registers, then runs the steps backwards calling ``jax.vjp`` of the step,
which re-evaluates g' from the recomputed h: no h, no surrogate coefficient and no spike is
read back. Per-step parameter gradients (threshold, time constant, ...) are summed over time
in registers and written once per neuron (``[N]``, reduced over neurons by the caller), and
only for the parameters the caller asks for.

Bytes per neuron-step (b = x itemsize, c = 4 for an f32 state, K = chunk):
    forward  (primal)        read x b, write s b                          = 2b
    forward  (for backward)  + write checkpoints                          = 2b + c/K
    backward                 read x b, read ds b, read ck c/K, write dx b = 3b + c/K
    fwd+bwd, K = 32:  f32 8.125 + 12.125 = 20.25 B;  bf16 4.125 + 6.125 = 10.25 B
(at most c/K: with T a multiple of K there are T/K - 1 checkpoints; none when T <= K), plus
per-neuron terms divided by T: v_T written (b), dv_T read (b); v0 read (c) and dv0 written
(c) only when v0 is per-neuron / differentiated (a scalar v0 is one [1] value); c for each
parameter gradient asked for. ``return_v_seq`` adds b to the forward and b (its
cotangent) to the backward. The residual the backward keeps is the checkpoints, c/K bytes
per neuron-step (x and the spikes' cotangent are inputs anyway).

Exactness: the backward's recomputation runs the same step on the same f32 values as the
forward, so it reproduces h and s (up to the compiler contracting the same multiply-add
pairs differently in the two kernels, which could only flip a spike whose h lies within one
ulp of the threshold). Indices are int32: T * N + block must stay below 2**31.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from spikefuse.kernels._compat import silence_triton_deprecation
from spikefuse.kernels.sharding import check_interpret, match_varying, out_struct

__all__ = ["ScanConfig", "check_size", "default_config", "num_checkpoints",
           "residual_bytes_per_step", "scan_backward", "scan_forward"]

_INDEX_LIMIT = 2**31
# Programs wanted in flight: a few per SM on a 132-SM H100/H200, so that whole SMs do not
# idle on the last wave and each SM has several programs to switch between while loads land.
_TARGET_PROGRAMS = 1024
_MIN_BLOCK = 32  # one warp, one neuron per thread
_MAX_BLOCK = 128  # four warps, one neuron per thread: registers go to the K rows in flight


def _is_power_of_two(v: int) -> bool:
    return isinstance(v, int) and v > 0 and v & (v - 1) == 0


@dataclasses.dataclass(frozen=True)
class ScanConfig:
    """Launch configuration of the scan kernels.

    Attributes:
      block: neurons per program, a power of two (every in-kernel array has this size).
      chunk: K, time steps per chunk: rows loaded together before K dependent steps; also
        the checkpoint interval (the backward holds one chunk's states in registers).
      num_warps: Triton warps per program (a power of two). Ignored when interpreting.
      num_stages: Triton pipelining stages. Ignored when interpreting.
      prefetch: issue the next chunk's loads before computing the current one (costs K more
        rows of registers; pays off when few programs run long time loops).
    """

    block: int
    chunk: int
    num_warps: int
    num_stages: int = 1
    prefetch: bool = False

    def __post_init__(self):
        if not _is_power_of_two(self.block):
            raise ValueError(f"block must be a power of two, got {self.block}")
        if not (isinstance(self.chunk, int) and 1 <= self.chunk <= 128):
            raise ValueError(f"chunk must be an int in [1, 128], got {self.chunk}")
        if not _is_power_of_two(self.num_warps):
            raise ValueError(f"num_warps must be a power of two, got {self.num_warps}")
        if not (isinstance(self.num_stages, int) and self.num_stages >= 1):
            raise ValueError(f"num_stages must be an int >= 1, got {self.num_stages}")


def default_config(T: int, N: int, dtype) -> ScanConfig:
    """The heuristic configuration for ``T`` steps of ``N`` neurons with inputs of ``dtype``.

    Tuned on an H200 (jax 0.11.2; bench/RESULTS.md has the sweeps):

    * Neurons per program: the largest block up to 128 that still launches
      ``_TARGET_PROGRAMS`` programs, one neuron per thread (N = 4096 -> 128 programs of 32;
      65536 -> 1024 of 64; 1M and up -> blocks of 128).
    * Large N (blocks at their maximum), the bandwidth-bound case: K = 8 steps per chunk.
      The shorter chunk costs checkpoint bytes (4/K B per neuron-step each way) but frees
      registers in the backward, which holds ~3K values per thread: at T=32 x 4M, f32 went
      from 0.836 ms (K=32) to 0.779 (K=16) and 0.771 ms (K=8, 95% of the copy ceiling).
      2-byte inputs put two neurons on each thread (4-byte accesses): bf16 0.597 ms (block
      128, K=32) -> 0.461 ms (block 256, K=8).
    * Small N, long T (few programs; latency-bound): K = 32 and prefetch of the next chunk,
      to keep 32-64 rows of loads in flight per program.
    """
    block = _MAX_BLOCK
    while block > _MIN_BLOCK and pl.cdiv(N, block) < _TARGET_PROGRAMS:
        block //= 2
    per_thread = 1
    if block == _MAX_BLOCK:
        chunk = max(1, min(8, int(T)))
        if jnp.dtype(dtype).itemsize < 4 and pl.cdiv(N, 2 * block) >= _TARGET_PROGRAMS:
            per_thread, block = 2, 2 * block
    else:
        chunk = max(1, min(32, int(T)))
    prefetch = pl.cdiv(N, block) < _TARGET_PROGRAMS and T >= 2 * chunk
    return ScanConfig(block=block, chunk=chunk, num_warps=max(1, block // (32 * per_thread)),
                      num_stages=1, prefetch=prefetch)


def num_checkpoints(T: int, chunk: int) -> int:
    """Rows of the checkpoint array: one per chunk boundary, ceil(T / K) - 1."""
    return -(-T // chunk) - 1


def residual_bytes_per_step(T: int, chunk: int, state_itemsize: int = 4) -> float:
    """Bytes per neuron-step the backward keeps beyond inputs and outputs (checkpoints)."""
    return num_checkpoints(T, chunk) * state_itemsize / T


def _heaviside_ct(grad_fn):
    """H(h - thr) with dH/dh = g'(h - thr), dH/dthr = -g', dH/dgparams = 0 (kernel-local)."""

    @jax.custom_jvp
    def spike(u, gparams):
        return (u >= 0).astype(u.dtype)

    @spike.defjvp
    def _(primals, tangents):
        u, gparams = primals
        return spike(u, gparams), grad_fn(u, *gparams).astype(u.dtype) * tangents[0]

    return spike


def check_size(T: int, N: int, config: ScanConfig) -> None:
    """Raises ValueError unless ``[T, N]`` can be indexed with int32 under ``config``."""
    if T * N + config.block > _INDEX_LIMIT:  # the largest in-kernel index is < T*N + block
        raise ValueError(
            f"x_seq has T * N = {T} * {N} elements; the scan kernels index with int32 and "
            f"support at most 2**31 - block = {_INDEX_LIMIT - config.block} (use "
            "backend='reference' for larger inputs)")


def _check_operands(x, v0, params, gparams, config):
    T, N = x.shape
    check_size(T, N, config)
    if v0.shape not in ((1,), (N,)):
        raise ValueError(f"v0 must have shape (1,) or ({N},), got {v0.shape}")
    for i, p in enumerate((*params, *gparams)):
        if p.ndim != 1 or p.shape[0] not in (1, N):
            raise ValueError(f"parameter {i} must have shape (1,) or ({N},), got {p.shape}")


def _compiler_params(config, interpret):
    if interpret:
        return None
    return plt.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages)


def _param_spec(p, block):
    if p.shape[0] == 1:
        return pl.BlockSpec((1,), lambda i: (0,))
    return pl.BlockSpec((block,), lambda i: (i,))


def _param_kinds(ps):
    # True: a [1] scalar broadcast to the block; False: a per-neuron [N] array. (With N = 1
    # both mean the same; the scalar path is taken, matching `_param_spec`.)
    return tuple(p.shape[0] == 1 for p in ps)


class _Rows:
    """Masked row access to a program's block of ``[rows, N]`` / ``[N]`` refs."""

    def __init__(self, block, n, cdt):
        self.block, self.cdt = block, cdt
        idx = pl.program_id(0) * block + jnp.arange(block, dtype=jnp.int32)
        self.mask = idx < n

    def _at(self, ref, t, valid):
        mask = self.mask if valid is None else jnp.logical_and(self.mask, valid)
        if t is None:
            return ref.at[pl.ds(0, self.block)], mask
        # A static row index becomes an int32 value too (interpret mode needs an array).
        return ref.at[jnp.asarray(t, jnp.int32), pl.ds(0, self.block)], mask

    def load(self, ref, t=None, valid=None):
        at, mask = self._at(ref, t, valid)
        return plt.load(at, mask=mask, other=0).astype(self.cdt)

    def store(self, ref, value, t=None, valid=None):
        at, mask = self._at(ref, t, valid)
        plt.store(at, value.astype(ref.dtype), mask=mask)

    def param(self, ref, scalar):
        if scalar:
            return jnp.full((self.block,), ref[0], self.cdt)
        return self.load(ref)


# -- forward ------------------------------------------------------------------------------
def scan_forward(step: Callable, grad_fn: Callable, x, v0, params: tuple, gparams: tuple, *,
                 config: ScanConfig, interpret: bool, save_checkpoints: bool,
                 save_v_seq: bool = False):
    """Runs ``step`` over T for N neurons in one kernel.

    Args:
      step: ``step(v, x, params, fire) -> (s, v_new)``, static.
      grad_fn: ``grad_fn(u, *gparams)`` = g'(u), static. The forward computes no
        derivative; ``grad_fn`` and ``gparams`` are accepted so both kernels take the same
        arguments, and are not passed to the forward kernel.
      x: ``[T, N]`` float inputs.
      v0: initial state in the compute dtype, ``[N]``, or ``[1]`` for one value for all.
      params: step parameters, each ``[1]`` or ``[N]``, in the compute dtype.
      gparams: surrogate parameters, each ``[1]`` or ``[N]``, in the compute dtype.
      config: launch configuration (e.g. `default_config`).
      interpret: run in Pallas interpret mode.
      save_checkpoints: also return the chunk-boundary states for `scan_backward`.
      save_v_seq: also return the membrane after each step, ``[T, N]`` in x's dtype.

    Returns:
      ``(s [T, N] x.dtype, v_T [N] x.dtype, ck [n_ck, N] compute dtype or None,
      v_seq [T, N] or None)``.
    """
    T, N = x.shape
    _check_operands(x, v0, params, gparams, config)
    cdt = v0.dtype
    K, block = config.chunk, config.block
    n_ck = num_checkpoints(T, K) if save_checkpoints else 0
    kernel = functools.partial(
        _forward_kernel, step=step, n=N, T=T, K=K, block=block, cdt=cdt, n_ck=n_ck,
        v0_scalar=v0.shape[0] == 1, kinds=_param_kinds(params), save_v_seq=save_v_seq,
        prefetch=config.prefetch)
    seq_spec = pl.BlockSpec((T, block), lambda i: (0, i))
    vec_spec = pl.BlockSpec((block,), lambda i: (i,))
    check_interpret((x, v0, *params), interpret)
    x, v0, *params = match_varying(x, v0, *params)  # inside a shard_map: one varying set
    out_shape = [out_struct((T, N), x.dtype, x), out_struct((N,), x.dtype, x)]
    out_specs = [seq_spec, vec_spec]
    if n_ck:
        out_shape.append(out_struct((n_ck, N), cdt, x))
        out_specs.append(pl.BlockSpec((n_ck, block), lambda i: (0, i)))
    if save_v_seq:
        out_shape.append(out_struct((T, N), x.dtype, x))
        out_specs.append(seq_spec)
    with silence_triton_deprecation():
        outs = pl.pallas_call(
            kernel,
            out_shape=out_shape,
            grid=(pl.cdiv(N, block),),
            in_specs=[seq_spec, *(_param_spec(p, block) for p in (v0, *params))],
            out_specs=out_specs,
            compiler_params=_compiler_params(config, interpret),
            interpret=interpret,
            name="spikefuse_scan_fwd",
        )(x, v0, *params)
    s, v_T, *rest = outs
    ck = rest.pop(0) if n_ck else None
    v_seq = rest.pop(0) if save_v_seq else None
    return s, v_T, ck, v_seq


def _forward_kernel(*refs, step, n, T, K, block, cdt, n_ck, v0_scalar, kinds, save_v_seq,
                    prefetch):
    it = iter(refs)
    x_ref = next(it)  # [T, block]
    v0_ref = next(it)  # [block] or [1]
    p_refs = [next(it) for _ in kinds]  # [1] or [block] each
    s_ref = next(it)  # [T, block]
    vT_ref = next(it)  # [block]
    ck_ref = next(it) if n_ck else None  # [n_ck, block]
    vs_ref = next(it) if save_v_seq else None  # [T, block]

    rows = _Rows(block, n, cdt)
    params = tuple(rows.param(r, k) for r, k in zip(p_refs, kinds))

    def fire(h, thr):  # the same comparison as the reference spike
        return (h - thr >= 0).astype(cdt)

    n_full, rem = divmod(T, K)

    def load_chunk(t0, steps, valid=None):
        # Clamped rows keep even masked-off (prefetch past the end) addresses in bounds.
        return [rows.load(x_ref, jnp.minimum(t0 + k, T - 1) if valid is not None else t0 + k,
                          valid) for k in range(steps)]

    def run_chunk(t0, v, xs):
        for k, x in enumerate(xs):
            s, v = step(v, x, params, fire)
            rows.store(s_ref, s, t0 + k)
            if vs_ref is not None:
                rows.store(vs_ref, v, t0 + k)
        return v

    v = rows.param(v0_ref, v0_scalar)
    if n_full:
        def body(c, carry):
            v, *xs = carry
            t0 = c * K
            if prefetch:
                nxt = load_chunk(t0 + K, K, valid=c + 1 < n_full)
            else:
                xs, nxt = load_chunk(t0, K), []
            v = run_chunk(t0, v, xs)
            if ck_ref is not None:  # the state at the start of chunk c + 1
                rows.store(ck_ref, v, jnp.minimum(c, n_ck - 1), valid=c < n_ck)
            return (v, *nxt)

        init = (v, *load_chunk(0, K)) if prefetch else (v,)
        v = jax.lax.fori_loop(0, n_full, body, init)[0]
    if rem:
        v = run_chunk(n_full * K, v, load_chunk(n_full * K, rem))
    rows.store(vT_ref, v)


# -- backward -----------------------------------------------------------------------------
def scan_backward(step: Callable, grad_fn: Callable, x, v0, ck, params: tuple,
                  gparams: tuple, ds, dv_T, dv_seq, *, config: ScanConfig, interpret: bool,
                  param_grads: tuple[bool, ...], v0_grad: bool = True):
    """BPTT through `scan_forward`'s computation, in one kernel.

    Args:
      step, grad_fn, x, v0, params, gparams, config, interpret: as given to `scan_forward`.
      ck: the checkpoints it returned (None when there are none, T <= K).
      ds: cotangent of the spikes ``[T, N]`` (x's dtype) or None for zero.
      dv_T: cotangent of v_T ``[N]`` or None for zero.
      dv_seq: cotangent of the membrane sequence ``[T, N]`` or None.
      param_grads: one flag per entry of ``params``: compute its gradient.
      v0_grad: compute the gradient to v0.

    Returns:
      ``(dx [T, N] x.dtype, dv0, dparams)``: ``dv0`` is ``[N]`` in the compute dtype (None
      unless ``v0_grad``); ``dparams`` holds, for each flagged parameter, the per-neuron
      gradient summed over time, ``[N]``, and None for the others. The caller reduces
      ``[N]`` gradients of ``[1]`` operands (v0 included) to their shape.
    """
    T, N = x.shape
    _check_operands(x, v0, params, gparams, config)
    cdt = v0.dtype
    K, block = config.chunk, config.block
    n_ck = num_checkpoints(T, K)
    if n_ck and (ck is None or ck.shape != (n_ck, N)):
        raise ValueError(f"ck must have shape ({n_ck}, {N}) for chunk {K}")
    want = tuple(i for i, w in enumerate(param_grads) if w)
    kernel = functools.partial(
        _backward_kernel, step=step, grad_fn=grad_fn, n=N, T=T, K=K, block=block, cdt=cdt,
        n_ck=n_ck, v0_scalar=v0.shape[0] == 1, kinds=_param_kinds(params),
        gkinds=_param_kinds(gparams), has_ds=ds is not None, has_dvT=dv_T is not None,
        has_dvs=dv_seq is not None, want=want, v0_grad=v0_grad, prefetch=config.prefetch)
    seq_spec = pl.BlockSpec((T, block), lambda i: (0, i))
    vec_spec = pl.BlockSpec((block,), lambda i: (i,))
    operands, in_specs = [x, v0], [seq_spec, _param_spec(v0, block)]
    if n_ck:
        operands.append(ck)
        in_specs.append(pl.BlockSpec((n_ck, block), lambda i: (0, i)))
    operands += [*params, *gparams]
    in_specs += [_param_spec(p, block) for p in (*params, *gparams)]
    for a, spec in ((ds, seq_spec), (dv_T, vec_spec), (dv_seq, seq_spec)):
        if a is not None:
            operands.append(a)
            in_specs.append(spec)
    n_vec = len(want) + bool(v0_grad)  # dv0 (optional), then the parameter gradients
    check_interpret(operands, interpret)
    operands = match_varying(*operands)  # inside a shard_map: one set of varying axes
    out_shape = [out_struct((T, N), x.dtype, operands[0])]
    out_shape += [out_struct((N,), cdt, operands[0]) for _ in range(n_vec)]
    out_specs = [seq_spec] + [vec_spec for _ in range(n_vec)]
    with silence_triton_deprecation():
        dx, *vecs = pl.pallas_call(
            kernel,
            out_shape=out_shape,
            grid=(pl.cdiv(N, block),),
            in_specs=in_specs,
            out_specs=out_specs,
            compiler_params=_compiler_params(config, interpret),
            interpret=interpret,
            name="spikefuse_scan_bwd",
        )(*operands)
    dv0 = vecs.pop(0) if v0_grad else None
    dparams = [None] * len(params)
    for i, g in zip(want, vecs):
        dparams[i] = g
    return dx, dv0, tuple(dparams)


def _backward_kernel(*refs, step, grad_fn, n, T, K, block, cdt, n_ck, v0_scalar, kinds,
                     gkinds, has_ds, has_dvT, has_dvs, want, v0_grad, prefetch):
    it = iter(refs)
    x_ref = next(it)  # [T, block]
    v0_ref = next(it)  # [block] or [1]
    ck_ref = next(it) if n_ck else None  # [n_ck, block]
    p_refs = [next(it) for _ in kinds]  # [1] or [block] each
    g_refs = [next(it) for _ in gkinds]  # [1] or [block] each
    ds_ref = next(it) if has_ds else None  # [T, block]
    dvT_ref = next(it) if has_dvT else None  # [block]
    dvs_ref = next(it) if has_dvs else None  # [T, block]
    dx_ref = next(it)  # [T, block]
    dv0_ref = next(it) if v0_grad else None  # [block]
    dp_refs = [next(it) for _ in want]  # [block] each

    rows = _Rows(block, n, cdt)
    params = tuple(rows.param(r, k) for r, k in zip(p_refs, kinds))
    gparams = tuple(rows.param(r, k) for r, k in zip(g_refs, gkinds))
    spike = _heaviside_ct(grad_fn)

    def fire(h, thr):
        return spike(h - thr, gparams)

    def fire_primal(h, thr):  # the recomputation needs no derivative
        return (h - thr >= 0).astype(cdt)

    zero = jnp.zeros((block,), cdt)
    n_full, rem = divmod(T, K)

    def load_chunk(c, t0, steps, valid=None):
        """x, ds, dv_seq rows of a chunk and the state at its start (chunk index c)."""
        def row(ref, k):
            if ref is None:
                return zero
            t = t0 + k if valid is None else jnp.clip(t0 + k, 0, T - 1)
            return rows.load(ref, t, valid)

        xs = [row(x_ref, k) for k in range(steps)]
        dss = [row(ds_ref, k) for k in range(steps)]
        dvss = [row(dvs_ref, k) for k in range(steps)] if has_dvs else []
        if isinstance(c, int):  # static chunk index
            v_start = v0 if c == 0 else rows.load(ck_ref, c - 1)
        elif n_ck == 0:
            v_start = v0
        else:
            v_ck = rows.load(ck_ref, jnp.clip(c - 1, 0, n_ck - 1), valid)
            v_start = jnp.where(c == 0, v0, v_ck)
        return (v_start, *xs, *dss, *dvss)

    def unpack(chunk, steps):
        v_start, *r = chunk
        xs, dss, dvss = r[:steps], r[steps:2 * steps], r[2 * steps:]
        return v_start, xs, dss, dvss

    def vjp_step(v, x, s_ct, v_ct):
        def f(v, x, *wp):
            p = list(params)
            for i, value in zip(want, wp):
                p[i] = value
            return step(v, x, tuple(p), fire)

        _, pullback = jax.vjp(f, v, x, *(params[i] for i in want))
        return pullback((s_ct, v_ct))

    def reverse_chunk(t0, steps, chunk, dv, acc):
        v_start, xs, dss, dvss = unpack(chunk, steps)
        # Recompute the chunk's states from its checkpoint, in registers.
        v_prev, v = [], v_start
        for k in range(steps):
            v_prev.append(v)
            if k + 1 < steps:
                _, v = step(v, xs[k], params, fire_primal)
        for k in reversed(range(steps)):
            v_ct = dv + dvss[k] if has_dvs else dv
            dv, dx, *dps = vjp_step(v_prev[k], xs[k], dss[k], v_ct)
            rows.store(dx_ref, dx, t0 + k)
            acc = tuple(a + g for a, g in zip(acc, dps))
        return dv, acc

    v0 = rows.param(v0_ref, v0_scalar)
    dv = rows.load(dvT_ref) if has_dvT else zero
    acc = tuple(zero for _ in want)
    if rem:  # the static tail chunk goes first
        t0 = n_full * K
        dv, acc = reverse_chunk(t0, rem, load_chunk(n_full, t0, rem), dv, acc)
    if n_full:
        def body(i, carry):
            dv, acc, nxt = carry
            c = n_full - 1 - i
            t0 = c * K
            if prefetch:
                chunk = nxt
                nxt = load_chunk(c - 1, t0 - K, K, valid=c >= 1)
            else:
                chunk = load_chunk(c, t0, K)
            dv, acc = reverse_chunk(t0, K, chunk, dv, acc)
            return dv, acc, nxt

        c_last = n_full - 1
        nxt = load_chunk(c_last, c_last * K, K, valid=True) if prefetch else ()
        dv, acc, _ = jax.lax.fori_loop(0, n_full, body, (dv, acc, tuple(nxt)))
    if dv0_ref is not None:
        rows.store(dv0_ref, dv)
    for ref, a in zip(dp_refs, acc):
        rows.store(ref, a)
