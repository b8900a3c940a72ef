"""Multi-step scan kernels: a neuron's forward and BPTT backward, one Pallas kernel each.

Generic over a *step*; nothing here knows about neurons, pytrees or surrogates:

* ``step(state, xs, params) -> (outs, new_state)``: one time step of elementwise jnp code,
  over flat tuples of ``[block]`` rows in the compute dtype: ``state`` (m leaves), ``xs``
  (the p inputs of the step), ``params`` (per-neuron or broadcast scalars); ``outs`` are the
  per-step outputs (the spike, and on request the new state). A step is a static, hashable
  callable; ``spikefuse.neurons`` builds it from a user's pytree step and a surrogate (the
  Heaviside spike with its surrogate derivative is a ``custom_jvp`` inside the step).
The backward kernel differentiates ``step`` with ``jax.vjp`` inside the kernel body, so a new
neuron needs no hand-written gradient; forward mode runs `scan_forward` on the step's
``jax.jvp`` (state and tangent state carried together).

Data layout
-----------
The neurons ``*shape`` are flattened to N; every per-step array is ``[T, N]`` (time-major, a
free reshape of ``[T, *shape]``), per-neuron arrays are ``[N]``. Program i of the 1-D grid
``cdiv(N, block)`` owns neurons ``[i*block, (i+1)*block)`` for all T steps and runs the time
loop itself, with the state in f32 registers (the compute dtype: f32 for bf16/f16/f32, f64
for f64). Refs are ``(T, block)`` / ``(rows, block)`` / ``(block,)`` blocks; a row is one
masked 1-D load or store (the neuron tail is ragged; Triton does not mask plain ref
accesses, interpret mode pads with NaN). Scalar parameters (and scalar initial states)
travel as ``[1]`` arrays, so a new value is a new operand, never a recompilation;
per-neuron ones as ``[N]``.

Time is processed in chunks of K = ``config.chunk`` steps: a statically unrolled loop issues
the chunk's K row loads, then runs the K dependent steps in registers, inside a
``fori_loop`` over the T // K full chunks; the T % K tail is a static, shorter chunk. The
loads of a chunk are independent, so each program keeps K rows in flight per stream instead
of one dependent round trip per step; ``config.prefetch`` additionally issues chunk c+1's
loads before computing chunk c (for few, long-running programs: small N, long T).

Saved for the backward
----------------------
Nothing per step beyond the outputs. The forward writes the per-step outputs and, for the
backward, every state leaf at each chunk boundary: ``ck[c] = state`` at the start of chunk
c + 1, m arrays ``[ceil(T/K) - 1, N]`` in the compute dtype (chunk 0 starts at the initial
state). The backward walks the chunks in reverse; for each it re-reads the K rows of the
inputs, recomputes the chunk's states from its checkpoint in registers, then runs the steps
backwards calling ``jax.vjp`` of the step, which re-evaluates g' from the recomputed values:
no pre-activation, no surrogate coefficient and no spike is read back. Per-step parameter
gradients are summed over time in registers and written once per neuron (``[N]``, reduced
over neurons by the caller), and only for the parameters the caller asks for.

Bytes per neuron-step (b = input/output itemsize, c = 4 for f32 state, K = chunk, m state
leaves, one input and one output per step):
    forward  (primal)        read x b, write s b                          = 2b
    forward  (for backward)  + write checkpoints                          = 2b + m·c/K
    backward                 read x b, read ds b, read ck m·c/K, write dx b = 3b + m·c/K
    fwd+bwd, m = 1, K = 32:  f32 8.125 + 12.125 = 20.25 B;  bf16 4.125 + 6.125 = 10.25 B
(at most m·c/K: with T a multiple of K there are T/K - 1 checkpoints; none when T <= K);
each further input adds b to the forward and 2b to the backward, each further per-step
output (the state sequence on request) b to the forward and b (its cotangent) to the
backward. Per-neuron terms are divided by T: final states written, their cotangents read,
initial states read and their gradients written (only when per-neuron / differentiated),
one c per parameter gradient asked for. The residual the backward keeps is the
checkpoints, m·c/K bytes per neuron-step (the inputs and the outputs' cotangents exist
anyway).

Exactness: the backward's recomputation runs the same step on the same f32 values as the
forward, so it reproduces every state and spike (up to the compiler contracting the same
multiply-add pairs differently in the two kernels, which could only flip a spike whose
pre-activation lies within one ulp of the threshold). Indices are int32: T * N + block must
stay below 2**31.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from spikefuse.kernels import _compat
from spikefuse.kernels._compat import silence_triton_deprecation
from spikefuse.kernels.sharding import check_interpret, match_varying, out_struct

__all__ = ["TRITON", "Family", "ScanConfig", "backward", "cells", "check_size",
           "default_config", "forward", "num_checkpoints", "residual_bytes_per_step",
           "scan_backward", "scan_forward", "step_vjp"]

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

    Tuned on an H200 (jax 0.11.2; bench/RESULTS.md has the sweeps) for one state leaf (LIF);
    neurons with more state leaves use the same configuration (not tuned separately):

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


def cells(shape: Sequence[int]) -> tuple[int]:
    """The layout of a neuron shape in these kernels: flat, ``(N,)`` (``[T, N]`` per step).
    (The TPU kernels' `tpu_scan.cells` keeps a 2-D ``(M, D)`` instead.)"""
    return (math.prod(shape),)


def num_checkpoints(T: int, chunk: int) -> int:
    """Rows of each checkpoint array: one per chunk boundary, ceil(T / K) - 1."""
    return -(-T // chunk) - 1


def residual_bytes_per_step(T: int, chunk: int, state_itemsize: int = 4,
                            n_state: int = 1) -> float:
    """Bytes per neuron-step the backward keeps beyond inputs and outputs (checkpoints of
    ``n_state`` state leaves)."""
    return n_state * num_checkpoints(T, chunk) * state_itemsize / T


def check_size(T: int, N: int, config: ScanConfig) -> None:
    """Raises ValueError unless ``[T, N]`` can be indexed with int32 under ``config``."""
    if T * N + config.block > _INDEX_LIMIT:  # the largest in-kernel index is < T*N + block
        raise ValueError(
            f"x_seq has T * N = {T} * {N} elements; the scan kernels index with int32 and "
            f"support at most 2**31 - block = {_INDEX_LIMIT - config.block} (use "
            "backend='reference' for larger inputs)")


def _check_operands(xs, init, params, config):
    if not xs or not init:
        raise ValueError("the scan kernels need at least one input and one state leaf")
    T, N = xs[0].shape
    check_size(T, N, config)
    for i, x in enumerate(xs):
        if x.shape != (T, N):
            raise ValueError(f"input {i} must have shape ({T}, {N}), got {x.shape}")
    cdt = init[0].dtype
    for what, vecs in (("state", init), ("parameter", params)):
        for i, p in enumerate(vecs):
            if p.ndim != 1 or p.shape[0] not in (1, N):
                raise ValueError(f"{what} {i} must have shape (1,) or ({N},), got {p.shape}")
    for i, v in enumerate(init):
        if v.dtype != cdt:
            raise ValueError(f"state {i} has dtype {v.dtype}; every state leaf must have "
                             f"the compute dtype {cdt}")
    return T, N, cdt


def _vec_spec(p, block):
    if p.shape[0] == 1:
        return pl.BlockSpec((1,), lambda i: (0,))
    return pl.BlockSpec((block,), lambda i: (i,))


def _rows_spec(rows, block):
    return pl.BlockSpec((rows, block), lambda i: (0, i))


def _spec(shape, block, *, result=False):
    """A Triton program's block of an operand or result: ``[rows, block]`` of a ``[rows, N]``
    array, ``[block]`` of an ``[N]`` one; of an operand of one element (a scalar shared by
    all neurons), the whole of it. (A result always has N elements, one per neuron.)"""
    if len(shape) == 2:
        return _rows_spec(shape[0], block)
    if result:
        return pl.BlockSpec((block,), lambda i: (i,))
    return _vec_spec(jax.ShapeDtypeStruct(shape, jnp.float32), block)


def _kinds(vecs) -> tuple[bool, ...]:
    # True: a [1] scalar broadcast to the block; False: a per-neuron [N] array. (With N = 1
    # both mean the same; the scalar path is taken, matching `_vec_spec`.)
    return tuple(p.shape[0] == 1 for p in vecs)


class _Rows:
    """Masked row access to a Triton program's block of ``[rows, N]`` / ``[N]`` refs.

    The kernel bodies below reach memory only through such an object (``load``, ``store``
    of one row; ``vec`` of a per-neuron or scalar operand), so that the Mosaic GPU family
    (`mgpu_scan`) runs the same bodies with its own row access."""

    def __init__(self, block, n, cdt, *, plt):
        self.block, self.cdt, self.plt = block, cdt, plt
        idx = pl.program_id(0) * block + jnp.arange(block, dtype=jnp.int32)
        self.mask = idx < n
        self.zero = jnp.zeros((block,), cdt)

    def _at(self, ref, t, valid):
        mask = self.mask if valid is None else jnp.logical_and(self.mask, valid)
        # Every index of an access is int32: a row index (static or a loop counter) and the
        # column start alike. A Python int start would become int64 under jax_enable_x64,
        # beside an int32 row, and interpret mode refuses mixed index types.
        cols = pl.ds(jnp.int32(0), self.block)
        if t is None:
            return ref.at[cols], mask
        return ref.at[jnp.asarray(t, jnp.int32), cols], mask

    def load(self, ref, t=None, valid=None):
        if ref is None:  # an absent operand (a zero cotangent)
            return self.zero
        at, mask = self._at(ref, t, valid)
        # `other` in the ref's dtype: a Python 0 would be int64 under jax_enable_x64.
        return self.plt.load(at, mask=mask, other=np.zeros((), ref.dtype)).astype(self.cdt)

    def store(self, ref, value, t=None, valid=None):
        at, mask = self._at(ref, t, valid)
        self.plt.store(at, value.astype(ref.dtype), mask=mask)

    def vec(self, ref, scalar):
        if scalar:
            return jnp.full((self.block,), ref[0], self.cdt)
        return self.load(ref)


def _take(it, n):
    return tuple(next(it) for _ in range(n))


def _clamp(i, hi):
    """``i`` (an int or an int32 scalar) clamped to ``[0, hi]``, as int32."""
    return jax.lax.clamp(np.int32(0), jnp.asarray(i, jnp.int32), np.int32(hi))


def _fori_loop(n, body, init):
    """``lax.fori_loop(0, n, body, init)`` with an int32 counter. (fori_loop with a static
    trip count carries a Python int, int64 under jax_enable_x64; here every index stays
    int32, as the kernels' index arithmetic is, on every setting.)"""
    def scan_body(carry, _):
        i, value = carry
        return (i + 1, body(i, value)), None

    return jax.lax.scan(scan_body, (np.int32(0), init), None, length=n)[0][1]


@dataclasses.dataclass(frozen=True)
class Family:
    """What a kernel family plugs into the shared kernel bodies of this module.

    Attributes:
      rows: ``rows(block, n, cdt)`` -> the row access object of one program (see `_Rows`).
      launch: ``launch(kernel, operands, out_shape, N, config, interpret, name)`` -> the
        results of running ``kernel`` over the neuron blocks (``out_shape``: a list of
        ``jax.ShapeDtypeStruct``).
      lowerable: maps a function traced inside a kernel body (the step, one step of BPTT) to
        an equal one the family's kernel compiler can lower (the identity for Triton).
    """

    rows: Callable
    launch: Callable
    lowerable: Callable = lambda fn: fn


def _triton_launch(kernel, operands, out_shape, N, config, interpret, name):
    plt = _triton()
    block = config.block
    compiler_params = None if interpret else plt.CompilerParams(
        num_warps=config.num_warps, num_stages=config.num_stages)
    with silence_triton_deprecation():
        return pl.pallas_call(
            kernel,
            out_shape=out_shape,
            grid=(pl.cdiv(N, block),),
            in_specs=[_spec(o.shape, block) for o in operands],
            out_specs=[_spec(o.shape, block, result=True) for o in out_shape],
            compiler_params=compiler_params,
            interpret=interpret,
            name=name,
        )(*operands)


def _triton():
    return _compat.require_pallas_triton("spikefuse.kernels.mgpu_scan")


def _triton_rows(block, n, cdt):
    return _Rows(block, n, cdt, plt=_triton())


TRITON = Family(rows=_triton_rows, launch=_triton_launch)


# -- forward ------------------------------------------------------------------------------
def scan_forward(step: Callable, xs: Sequence, init: Sequence, params: Sequence, *,
                 out_dtypes: Sequence, final_dtypes: Sequence, config: ScanConfig,
                 interpret: bool, save_checkpoints: bool):
    """Runs ``step`` over T for N neurons in one Triton kernel.

    Args:
      step: ``step(state, xs, params) -> (outs, new_state)`` on flat tuples, static.
      xs: the p inputs, each ``[T, N]`` (any float dtype; converted to the compute dtype).
      init: the m initial state leaves, each ``[N]`` or ``[1]`` (one value for all), in the
        compute dtype (which every state leaf keeps).
      params: step parameters, each ``[1]`` or ``[N]``.
      out_dtypes: dtype of each per-step output of ``step`` (stored as ``[T, N]``).
      final_dtypes: dtype of each final state leaf (stored as ``[N]``).
      config: launch configuration (e.g. `default_config`).
      interpret: run in Pallas interpret mode.
      save_checkpoints: also return the chunk-boundary states for `scan_backward`.

    Returns:
      ``(outs, finals, cks)``: tuples of ``[T, N]`` per-step outputs, ``[N]`` final states
      and (when ``save_checkpoints``) ``[n_ck, N]`` checkpoints per state leaf in the
      compute dtype, else ``()``.
    """
    return forward(TRITON, step, xs, init, params, out_dtypes=out_dtypes,
                   final_dtypes=final_dtypes, config=config, interpret=interpret,
                   save_checkpoints=save_checkpoints)


def forward(family: Family, step: Callable, xs: Sequence, init: Sequence, params: Sequence,
            *, out_dtypes: Sequence, final_dtypes: Sequence, config, interpret,
            save_checkpoints: bool):
    """`scan_forward` with the kernel ``family``'s row access and launch (``config`` has the
    ``block``, ``chunk`` and ``prefetch`` of `ScanConfig`)."""
    xs, init, params = tuple(xs), tuple(init), tuple(params)
    T, N, cdt = _check_operands(xs, init, params, config)
    K, block, m = config.chunk, config.block, len(init)
    if len(final_dtypes) != m:
        raise ValueError(f"final_dtypes must give one dtype per state leaf ({m})")
    n_ck = num_checkpoints(T, K) if save_checkpoints else 0
    kernel = functools.partial(
        _forward_kernel, step=step, n=N, T=T, K=K, block=block, cdt=cdt, n_x=len(xs),
        init_kinds=_kinds(init), kinds=_kinds(params), n_out=len(out_dtypes), n_ck=n_ck,
        prefetch=config.prefetch, rows=family.rows, lowerable=family.lowerable)
    check_interpret((*xs, *init, *params), interpret is not False)
    operands = match_varying(*xs, *init, *params)  # inside a shard_map: one varying set
    like = operands[0]
    out_shape = [out_struct((T, N), dt, like) for dt in out_dtypes]
    out_shape += [out_struct((N,), dt, like) for dt in final_dtypes]
    if n_ck:
        out_shape += [out_struct((n_ck, N), cdt, like) for _ in range(m)]
    res = family.launch(kernel, operands, out_shape, N, config, interpret,
                        "spikefuse_scan_fwd")
    n_out, n_fin = len(out_dtypes), len(final_dtypes)
    return tuple(res[:n_out]), tuple(res[n_out:n_out + n_fin]), tuple(res[n_out + n_fin:])


def _forward_kernel(*refs, step, n, T, K, block, cdt, n_x, init_kinds, kinds, n_out, n_ck,
                    prefetch, rows, lowerable):
    it = iter(refs)
    x_refs = _take(it, n_x)  # [T, block] each
    init_refs = _take(it, len(init_kinds))  # [1] or [block] each
    p_refs = _take(it, len(kinds))  # [1] or [block] each
    out_refs = _take(it, n_out)  # [T, block] each
    fin_refs = _take(it, len(init_kinds))  # [block] each
    ck_refs = tuple(it)  # [n_ck, block] each, when checkpoints are saved

    rows = rows(block, n, cdt)
    params = tuple(rows.vec(r, k) for r, k in zip(p_refs, kinds))
    step = lowerable(step)
    n_full, rem = divmod(T, K)

    def load_chunk(t0, steps, valid=None):
        # Clamped rows keep even masked-off (prefetch past the end) addresses in bounds.
        def t(k):
            return jnp.minimum(t0 + k, T - 1) if valid is not None else t0 + k

        return tuple(tuple(rows.load(r, t(k), valid) for r in x_refs) for k in range(steps))

    def run_chunk(t0, state, xs):
        for k, x in enumerate(xs):
            outs, state = step(state, x, params)
            for ref, o in zip(out_refs, outs):
                rows.store(ref, o, t0 + k)
        return tuple(state)

    state = tuple(rows.vec(r, k) for r, k in zip(init_refs, init_kinds))
    if n_full:
        def body(c, carry):
            state, nxt = carry
            t0 = c * K
            if prefetch:
                xs, nxt = nxt, load_chunk(t0 + K, K, valid=c + 1 < n_full)
            else:
                xs = load_chunk(t0, K)
            state = run_chunk(t0, state, xs)
            for ref, v in zip(ck_refs, state):  # the state at the start of chunk c + 1
                rows.store(ref, v, jnp.minimum(c, n_ck - 1), valid=c < n_ck)
            return state, nxt

        state = _fori_loop(n_full, body, (state, load_chunk(0, K) if prefetch else ()))[0]
    if rem:
        state = run_chunk(n_full * K, state, load_chunk(n_full * K, rem))
    for ref, v in zip(fin_refs, state):
        rows.store(ref, v)


# -- backward -----------------------------------------------------------------------------
def scan_backward(step: Callable, xs: Sequence, init: Sequence, cks: Sequence,
                  params: Sequence, d_outs: Sequence, d_finals: Sequence, *,
                  config: ScanConfig, interpret: bool, want_x: Sequence[bool],
                  want_init: Sequence[bool], want_params: Sequence[bool]):
    """BPTT through `scan_forward`'s computation, in one Triton kernel.

    Args:
      step, xs, init, params, config, interpret: as given to `scan_forward`.
      cks: the checkpoints it returned (``()`` when there are none, T <= K).
      d_outs: per per-step output of ``step``, its cotangent ``[T, N]`` or None for zero.
      d_finals: per state leaf, the cotangent of its final value ``[N]`` or None for zero.
      want_x, want_init, want_params: which gradients to compute, one flag per input,
        state leaf and parameter.

    Returns:
      ``(dxs, dinit, dparams)``, tuples with None for what was not asked for: ``dxs[i]`` is
      ``[T, N]`` in input i's dtype; ``dinit`` and ``dparams`` hold per-neuron gradients
      ``[N]`` in the compute dtype (parameters' summed over time). The caller reduces
      ``[N]`` gradients of ``[1]`` operands to their shape.
    """
    return backward(TRITON, step, xs, init, cks, params, d_outs, d_finals, config=config,
                    interpret=interpret, want_x=want_x, want_init=want_init,
                    want_params=want_params)


def backward(family: Family, step: Callable, xs: Sequence, init: Sequence, cks: Sequence,
             params: Sequence, d_outs: Sequence, d_finals: Sequence, *, config, interpret,
             want_x: Sequence[bool], want_init: Sequence[bool], want_params: Sequence[bool]):
    """`scan_backward` with the kernel ``family``'s row access and launch."""
    xs, init, cks, params = tuple(xs), tuple(init), tuple(cks), tuple(params)
    d_outs, d_finals = tuple(d_outs), tuple(d_finals)
    T, N, cdt = _check_operands(xs, init, params, config)
    K, block, m = config.chunk, config.block, len(init)
    n_ck = num_checkpoints(T, K)
    if len(cks) != (m if n_ck else 0) or any(c.shape != (n_ck, N) for c in cks):
        raise ValueError(f"cks must hold {m} arrays of shape ({n_ck}, {N}) for chunk {K}")
    if len(d_finals) != m or len(want_init) != m or len(want_x) != len(xs) \
            or len(want_params) != len(params):
        raise ValueError("one cotangent per state leaf and one flag per input, state leaf "
                         "and parameter are needed")
    kernel = functools.partial(
        _backward_kernel, step=step, n=N, T=T, K=K, block=block, cdt=cdt, n_x=len(xs),
        init_kinds=_kinds(init), kinds=_kinds(params), n_ck=n_ck,
        has_dout=tuple(d is not None for d in d_outs),
        has_dfin=tuple(d is not None for d in d_finals), want_x=tuple(map(bool, want_x)),
        want_init=tuple(map(bool, want_init)), want_params=tuple(map(bool, want_params)),
        prefetch=config.prefetch, rows=family.rows, lowerable=family.lowerable)
    present_outs = [d for d in d_outs if d is not None]
    present_fins = [d for d in d_finals if d is not None]
    operands = [*xs, *init, *cks, *params, *present_outs, *present_fins]
    check_interpret(operands, interpret is not False)
    operands = match_varying(*operands)  # inside a shard_map: one set of varying axes
    like = operands[0]
    x_out = [i for i, w in enumerate(want_x) if w]
    n_vec = sum(map(bool, want_init)) + sum(map(bool, want_params))
    out_shape = [out_struct((T, N), xs[i].dtype, like) for i in x_out]
    out_shape += [out_struct((N,), cdt, like) for _ in range(n_vec)]
    res = iter(family.launch(kernel, operands, out_shape, N, config, interpret,
                             "spikefuse_scan_bwd"))
    dxs = tuple(next(res) if w else None for w in want_x)
    dinit = tuple(next(res) if w else None for w in want_init)
    dparams = tuple(next(res) if w else None for w in want_params)
    return dxs, dinit, dparams


def step_vjp(step: Callable, state: tuple, xs: tuple, params: tuple, wx: Sequence[int],
             wp: Sequence[int], d_outs: tuple, d_state: tuple):
    """One step of BPTT, the body of the backward kernels (these and `tpu_scan`'s).

    Returns ``(d_state_before, d_xs, d_params)``: the cotangents of the step's ``state``, of
    the inputs ``xs[i]`` for i in ``wx`` and of the parameters ``params[i]`` for i in
    ``wp``, given ``d_outs`` and ``d_state`` (those of its per-step outputs and new state).
    ``jax.vjp`` of the step itself, so g' is recomputed from the values at hand.
    """
    def f(state, xw, pw):
        xf, pf = list(xs), list(params)
        for i, v in zip(wx, xw):
            xf[i] = v
        for i, v in zip(wp, pw):
            pf[i] = v
        outs, new = step(state, tuple(xf), tuple(pf))
        return tuple(outs), tuple(new)

    _, pullback = jax.vjp(f, state, tuple(xs[i] for i in wx), tuple(params[i] for i in wp))
    return pullback((d_outs, d_state))


def _backward_kernel(*refs, step, n, T, K, block, cdt, n_x, init_kinds, kinds, n_ck,
                     has_dout, has_dfin, want_x, want_init, want_params, prefetch, rows,
                     lowerable):
    m = len(init_kinds)
    it = iter(refs)
    x_refs = _take(it, n_x)  # [T, block] each
    init_refs = _take(it, m)  # [1] or [block] each
    ck_refs = _take(it, m if n_ck else 0)  # [n_ck, block] each
    p_refs = _take(it, len(kinds))  # [1] or [block] each
    dout_refs = tuple(next(it) if h else None for h in has_dout)  # [T, block] or absent
    dfin_refs = tuple(next(it) if h else None for h in has_dfin)  # [block] or absent
    dx_refs = tuple(next(it) if w else None for w in want_x)  # [T, block] each
    dinit_refs = tuple(next(it) if w else None for w in want_init)  # [block] each
    dp_refs = tuple(next(it) if w else None for w in want_params)  # [block] each

    rows = rows(block, n, cdt)
    params = tuple(rows.vec(r, k) for r, k in zip(p_refs, kinds))
    init = tuple(rows.vec(r, k) for r, k in zip(init_refs, init_kinds))
    wx = tuple(i for i, w in enumerate(want_x) if w)
    wp = tuple(i for i, w in enumerate(want_params) if w)
    n_full, rem = divmod(T, K)

    def load_chunk(c, t0, steps, valid=None):
        """The state at the start of chunk c, then its rows: x and output cotangents."""
        def t(k):
            return t0 + k if valid is None else _clamp(t0 + k, T - 1)

        xs = tuple(tuple(rows.load(r, t(k), valid) for r in x_refs) for k in range(steps))
        dos = tuple(tuple(rows.load(r, t(k), valid) if r is not None else rows.zero
                          for r in dout_refs) for k in range(steps))
        if isinstance(c, int):  # static chunk index
            start = init if c == 0 else tuple(rows.load(r, c - 1) for r in ck_refs)
        elif n_ck == 0:
            start = init
        else:
            row = _clamp(c - 1, n_ck - 1)
            first = jnp.full((block,), c == 0)  # a row of predicates: Mosaic GPU has no
            start = tuple(jnp.where(first, v0, rows.load(r, row, valid))  # scalar select
                          for v0, r in zip(init, ck_refs))
        return start, xs, dos

    @lowerable
    def vjp_step(state, x, d_out, d_state):
        return step_vjp(step, state, x, params, wx, wp, d_out, d_state)

    forward_step = lowerable(step)

    def reverse_chunk(t0, steps, chunk, d_state, acc):
        start, xs, dos = chunk
        # Recompute the chunk's states from its checkpoint, in registers.
        before, state = [], start
        for k in range(steps):
            before.append(state)
            if k + 1 < steps:
                state = tuple(forward_step(state, xs[k], params)[1])
        for k in reversed(range(steps)):
            d_state, dxw, dpw = vjp_step(before[k], xs[k], dos[k], d_state)
            for i, g in zip(wx, dxw):
                rows.store(dx_refs[i], g, t0 + k)
            acc = tuple(a + g for a, g in zip(acc, dpw))
        return tuple(d_state), acc

    d_state = tuple(rows.load(r) if r is not None else rows.zero for r in dfin_refs)
    acc = tuple(rows.zero for _ in wp)
    if rem:  # the static tail chunk goes first
        t0 = n_full * K
        d_state, acc = reverse_chunk(t0, rem, load_chunk(n_full, t0, rem), d_state, acc)
    if n_full:
        def body(i, carry):
            d_state, acc, nxt = carry
            c = n_full - 1 - i
            t0 = c * K
            if prefetch:
                chunk, nxt = nxt, load_chunk(c - 1, t0 - K, K, valid=c >= 1)
            else:
                chunk = load_chunk(c, t0, K)
            d_state, acc = reverse_chunk(t0, K, chunk, d_state, acc)
            return d_state, acc, nxt

        c_last = n_full - 1
        nxt = load_chunk(c_last, c_last * K, K, valid=True) if prefetch else ()
        d_state, acc, _ = _fori_loop(n_full, body, (d_state, acc, nxt))
    for ref, g in zip(dinit_refs, d_state):
        if ref is not None:
            rows.store(ref, g)
    for i, a in zip(wp, acc):
        rows.store(dp_refs[i], a)
