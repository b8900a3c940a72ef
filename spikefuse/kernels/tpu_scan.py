"""Multi-step scan kernels for TPU (Pallas Mosaic): a neuron's forward and BPTT backward.

The same contract and call signatures as `scan` (the GPU kernels): generic over a flat step
``step(state, xs, params) -> (outs, new_state)`` of elementwise jnp code; the backward runs
``jax.vjp`` of the step inside the kernel, forward mode runs `scan_forward` on the step's
``jax.jvp``. What differs is the layout, because a TPU computes on (8, 128) tiles of vector
registers and pipelines HBM <-> VMEM copies of whole blocks across a sequential grid.

Data layout
-----------
Neurons are a 2-D array of cells ``[M, D]`` (`cells`: the neuron shape's last dim kept as
the lane dim, the others merged; a flat ``[N]`` is viewed as ``[N / 128, 128]`` or
``[1, N]``), so that one time step of a block of neurons is a dense ``(bm, bd)`` slab of
vector registers, and ``[T, *shape] -> [T, M, D]`` is free where XLA's TPU tiling of the
user's array already agrees (the GPU layout ``[T, N]`` would cost a relayout copy and use
one sublane of eight per step). Per-step arrays are ``[T, M, D]``, per-neuron arrays
``[M, D]``; scalars (one value for all neurons) are ``[1, 1]`` operands in SMEM, so a new
value is a new operand, never a recompilation. `scan_forward` / `scan_backward` also accept
the GPU shapes ``[T, N]`` / ``[N]`` / ``[1]`` and return results in the shapes given.

The grid is ``(cdiv(M, bm), cdiv(D, bd), cdiv(T, K))`` with dimension semantics
("parallel", "parallel", "arbitrary"): a program is one block of neurons and one chunk of
K = ``config.chunk`` steps; the chunks of a block run in order on one core, so the state
lives in VMEM scratch (``(bm, bd)`` per state leaf, f32) from one chunk to the next, and
Pallas fetches chunk c + 1's ``(K, bm, bd)`` input block while chunk c computes. Inside a
chunk the K steps are unrolled on values; step k reads ``x_ref[k]`` and writes
``out_ref[k]``, each a dense slab. The last chunk may be shorter (T % K steps): it has its
own statically unrolled body, selected with ``pl.when``. Ragged neuron blocks need no
masks: Pallas TPU pads the reads of an edge block with unspecified values and drops its
out-of-bounds writes, and no value crosses neurons. Output blocks whose index does not
change along the time axis (final states, gradients of initial states and parameters, a
checkpoint row) stay in VMEM until the index changes; the kernels store to them every
chunk, and the last store is the one written back.

Saved for the backward
----------------------
As on GPU: every state leaf at every chunk boundary, ``ck[c]`` = the state at the start of
chunk c + 1, m arrays ``[ceil(T/K) - 1, M, D]`` in the compute dtype (block
``(None, bm, bd)``: a squeezed leading dim). The forward stores ``ck[c - 1]`` at the start
of chunk c. The backward walks the chunks in reverse through its index maps
(``nT - 1 - c``): per chunk it reads the checkpoint (the initial state for chunk 0),
recomputes the chunk's states, then runs ``jax.vjp`` of the step backwards, carrying the
state cotangent in VMEM scratch and summing each wanted parameter's per-neuron gradient over
time in another scratch (written once per neuron, ``[M, D]``; the caller reduces it to the
parameter's shape). No pre-activation, surrogate coefficient or spike is read back.

Bytes per neuron-step (b = input/output itemsize, c = 4 for f32 state, m state leaves, one
input and one output per step): the same as the GPU kernels (`scan`'s docstring): forward
2b (+ m·c/K with checkpoints), backward 3b + m·c/K; fwd+bwd at m = 1, K = 8: at most
f32 21 B, bf16 11 B (20.75 B and 10.75 B at T = 32, with 3 checkpoints). Edge blocks move
the padded tiles (a minor dim not a multiple of 128 is padded in HBM anyway). Per grid step
the kernels move ``K * bm * bd`` neuron-steps.

Exactness: the backward's recomputation runs the same step on the same f32 values as the
forward, so spikes and states are reproduced exactly in interpret mode; on a TPU both kernels
are compiled by Mosaic alike (not verified on a TPU). Mosaic has no float64: f64 runs only in
interpret mode. Indices: T * N must stay below 2**31, as on GPU.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from spikefuse.kernels.scan import default_config as scan_default_config
from spikefuse.kernels.scan import num_checkpoints, step_vjp
from spikefuse.kernels.sharding import check_interpret, match_varying, out_struct
from spikefuse.kernels.tpu_elementwise import Interpret, interpret_mode
from spikefuse.kernels.tpu_elementwise import view as cells  # a neuron shape's [M, D]

__all__ = ["TpuScanConfig", "cells", "check_size", "default_blocks", "default_config",
           "scan_backward", "scan_forward"]

_INDEX_LIMIT = 2**31
_LANES = 128
_SUBLANES = 16  # the row tile of 2-byte dtypes; a multiple of f32's 8
# Neuron-steps per block (K * bm * bd): 128 K, 512 KiB of f32 per operand buffer. The
# backward double-buffers three such streams (x, spike cotangent, dx) and holds K states
# per leaf: well inside the default scoped VMEM (16 MiB on v5e). Not tuned on a TPU.
_BLOCK_STEPS = 128 * 1024
_MAX_COLS = 512


@dataclasses.dataclass(frozen=True)
class TpuScanConfig:
    """Launch configuration of the TPU scan kernels.

    Attributes:
      chunk: K, time steps per grid step (the time block) and the checkpoint interval.
      block_rows: neuron rows per block, a positive multiple of 16, or None for the
        heuristic at launch (`default_blocks`); a value larger than M means all of M.
      block_cols: neuron columns (lanes) per block, a positive multiple of 128, or None for
        the heuristic; a value larger than D means all of D.
    """

    chunk: int
    block_rows: int | None = None
    block_cols: int | None = None

    def __post_init__(self):
        if not (isinstance(self.chunk, int) and 1 <= self.chunk <= 128):
            raise ValueError(f"chunk must be an int in [1, 128], got {self.chunk}")
        for name, tile in (("block_rows", _SUBLANES), ("block_cols", _LANES)):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, int) and v > 0 and v % tile == 0):
                raise ValueError(f"{name} must be None or a positive multiple of {tile}, "
                                 f"got {v}")


def default_config(T: int, N: int, dtype) -> TpuScanConfig:
    """The heuristic configuration for ``T`` steps of ``N`` neurons (not tuned on a TPU).

    K is the GPU heuristic's (`scan.default_config`), so that ``backend="pallas"`` keeps the
    same checkpoints whichever platform compiles it: 8 for large N (checkpoints cost
    m·4/8 bytes per neuron-step), 32 for small N and long T (fewer, longer grid steps, which
    also suits a TPU's per-grid-step cost). Block rows and columns are left to
    `default_blocks`, which sees the neuron layout at launch.
    """
    return TpuScanConfig(chunk=scan_default_config(T, N, dtype).chunk)


def default_blocks(K: int, M: int, D: int) -> tuple[int, int]:
    """``(bm, bd)`` for a ``[T, M, D]`` layout: all of D up to 512 lanes (else 512), and
    rows so that a ``(K, bm, bd)`` block holds about 128 K neuron-steps (a multiple of 16,
    at least 16); cut to the array when larger."""
    bd = D if D <= _MAX_COLS else _MAX_COLS
    lanes = -(-max(bd, 1) // _LANES) * _LANES
    bm = max(_SUBLANES, _BLOCK_STEPS // (K * lanes) // _SUBLANES * _SUBLANES)
    return min(bm, M), bd


def check_size(T: int, N: int, config: TpuScanConfig) -> None:
    """Raises ValueError unless ``[T, N]`` stays below the int32 index limit."""
    del config
    if T * N >= _INDEX_LIMIT:
        raise ValueError(
            f"x_seq has T * N = {T} * {N} elements; the scan kernels index with int32 and "
            f"support fewer than 2**31 (use backend='reference' for larger inputs)")


# -- operands -----------------------------------------------------------------------------
class _Layout:
    """The 3-D layout of one call, and how to convert the caller's arrays to and from it."""

    def __init__(self, xs, config, interpret):
        x = xs[0]
        if x.ndim not in (2, 3):
            raise ValueError(f"inputs must be [T, N] or [T, M, D], got shape {x.shape}")
        self.T, self.flat = x.shape[0], x.ndim == 2
        self.M: int
        self.D: int
        self.M, self.D = cells((x.shape[1],)) if self.flat else x.shape[1:]
        self.N = self.M * self.D
        check_size(self.T, self.N, config)
        for i, a in enumerate(xs):
            if a.shape != x.shape:
                raise ValueError(f"input {i} must have shape {x.shape}, got {a.shape}")
        K = config.chunk
        bm, bd = default_blocks(K, self.M, self.D)
        if config.block_rows is not None:
            bm = min(config.block_rows, self.M)
        if config.block_cols is not None:
            bd = min(config.block_cols, self.D)
        self.block, self.K = (bm, bd), K
        self.nT = pl.cdiv(self.T, K)
        self.grid = (pl.cdiv(self.M, bm), pl.cdiv(self.D, bd), self.nT)
        self.interpret = interpret_mode(interpret)

    def seq(self, a):  # [T, N] or [T, M, D] -> [T, M, D]
        return a.reshape(a.shape[0], self.M, self.D)

    def vec(self, a, what):  # [1], [N], [1, 1] or [M, D] -> [1, 1] or [M, D]
        if a.size == 1:
            return a.reshape(1, 1)
        if a.size != self.N or a.ndim not in (1, 2):
            raise ValueError(f"{what} must have shape (1,) or ({self.N},) (or (1, 1) or "
                             f"({self.M}, {self.D})), got {a.shape}")
        return a.reshape(self.M, self.D)

    def out_seq(self, a):
        return a.reshape(a.shape[0], self.N) if self.flat else a

    def out_vec(self, a):
        return a.reshape(self.N) if self.flat else a

    # BlockSpecs; the index maps take (i, j, c), c the grid's time index.
    def seq_spec(self, reverse=False):
        last = self.nT - 1
        if reverse:
            return pl.BlockSpec((self.K, *self.block), lambda i, j, c: (last - c, i, j))
        return pl.BlockSpec((self.K, *self.block), lambda i, j, c: (c, i, j))

    def vec_spec(self, scalar=False):
        if scalar:
            return pl.BlockSpec(memory_space=pltpu.SMEM)
        return pl.BlockSpec(self.block, lambda i, j, c: (i, j))

    def ck_spec(self, reverse=False):
        # Forward: ck[c - 1] is stored at the start of chunk c (chunk 0 stores the initial
        # state into row 0, which chunk 1 then overwrites). Backward: chunk cc reads
        # ck[cc - 1] (row 0, unused, for chunk 0).
        last = self.nT - 1
        if reverse:
            return pl.BlockSpec((None, *self.block),
                                lambda i, j, c: (jnp.maximum(last - c - 1, 0), i, j))
        return pl.BlockSpec((None, *self.block),
                            lambda i, j, c: (jnp.maximum(c - 1, 0), i, j))

    def call(self, kernel, operands, in_specs, out_shape, out_specs, scratch, name):
        check_interpret(operands, self.interpret is not False)
        operands = match_varying(*operands)  # inside a shard_map: one set of varying axes
        like = operands[0]
        return pl.pallas_call(
            kernel,
            out_shape=[out_struct(s, dt, like) for s, dt in out_shape],
            grid=self.grid,
            in_specs=in_specs,
            out_specs=out_specs,
            scratch_shapes=[pltpu.VMEM(self.block, dt) for dt in scratch],
            compiler_params=pltpu.CompilerParams(
                dimension_semantics=("parallel", "parallel", "arbitrary")),
            interpret=self.interpret,
            name=name,
        )(*operands)


def _check_dtype(cdt, interpret):
    if interpret is False and jnp.dtype(cdt).itemsize > 4:
        raise TypeError("the TPU kernels compile float32, bfloat16 and float16 only (Mosaic "
                        "has no float64); use backend='reference' for float64")


def _take(it, n):
    return tuple(next(it) for _ in range(n))


def _value(ref, scalar, block, cdt):
    """A ``block``-shaped value of a per-neuron ref, or of an SMEM [1, 1] scalar."""
    if scalar:
        return jnp.full(block, ref[0, 0], cdt)
    return ref[...].astype(cdt)


def _prepare(xs, init, params, config, interpret):
    """The checks and layout both kernels start with: ``(layout, init, params, cdt)``,
    the per-neuron operands in the kernels' layout, ``cdt`` the state's dtype."""
    if not xs or not init:
        raise ValueError("the scan kernels need at least one input and one state leaf")
    layout = _Layout(xs, config, interpret)
    cdt = init[0].dtype
    for i, v in enumerate(init):
        if v.dtype != cdt:
            raise ValueError(f"state {i} has dtype {v.dtype}; every state leaf must have "
                             f"the compute dtype {cdt}")
    _check_dtype(cdt, layout.interpret)
    return (layout, [layout.vec(v, f"state {i}") for i, v in enumerate(init)],
            [layout.vec(p, f"parameter {i}") for i, p in enumerate(params)], cdt)


def _kinds(vecs) -> tuple[bool, ...]:
    return tuple(v.size == 1 for v in vecs)  # True: an SMEM scalar


# -- forward ------------------------------------------------------------------------------
def scan_forward(step: Callable, xs: Sequence, init: Sequence, params: Sequence, *,
                 out_dtypes: Sequence, final_dtypes: Sequence, config: TpuScanConfig,
                 interpret: Interpret, save_checkpoints: bool):
    """Runs ``step`` over T for every neuron in one TPU kernel (`scan.scan_forward`'s
    contract).

    Args:
      step: ``step(state, xs, params) -> (outs, new_state)`` on flat tuples, static.
      xs: the p inputs, each ``[T, N]`` or ``[T, M, D]`` (any float dtype).
      init: the m initial state leaves, each per neuron (``[N]`` / ``[M, D]``) or one value
        for all (``[1]`` / ``[1, 1]``), in the compute dtype (which every state leaf keeps).
      params: step parameters, each per neuron or one value.
      out_dtypes: dtype of each per-step output of ``step``.
      final_dtypes: dtype of each final state leaf.
      config: launch configuration (`default_config`).
      interpret: ``False`` to compile with Mosaic (TPU), ``True`` for Pallas' interpreter,
        a ``pltpu.InterpretParams`` for TPU interpret mode (`tpu_elementwise.Interpret`).
      save_checkpoints: also return the chunk-boundary states for `scan_backward`.

    Returns:
      ``(outs, finals, cks)``: per-step outputs ``[T, ...]``, final states and (when
      ``save_checkpoints``) ``[n_ck, ...]`` checkpoints per state leaf in the compute
      dtype, else ``()``; in the layout of ``xs`` (``N`` or ``M, D`` per step).
    """
    xs, init, params = tuple(xs), tuple(init), tuple(params)
    lay, init, params, cdt = _prepare(xs, init, params, config, interpret)
    m = len(init)
    if len(final_dtypes) != m:
        raise ValueError(f"final_dtypes must give one dtype per state leaf ({m})")
    n_ck = num_checkpoints(lay.T, lay.K) if save_checkpoints else 0
    kernel = functools.partial(
        _forward_kernel, step=step, T=lay.T, K=lay.K, cdt=cdt, block=lay.block,
        n_x=len(xs), init_kinds=_kinds(init), kinds=_kinds(params), n_out=len(out_dtypes),
        n_ck=n_ck)
    operands = [*(lay.seq(x) for x in xs), *init, *params]
    in_specs = ([lay.seq_spec()] * len(xs) + [lay.vec_spec(s) for s in _kinds(init)]
                + [lay.vec_spec(s) for s in _kinds(params)])
    T, M, D = lay.T, lay.M, lay.D
    out_shape = [((T, M, D), dt) for dt in out_dtypes] + [((M, D), dt) for dt in final_dtypes]
    out_specs = [lay.seq_spec()] * len(out_dtypes) + [lay.vec_spec()] * m
    if n_ck:
        out_shape += [((n_ck, M, D), cdt)] * m
        out_specs += [lay.ck_spec()] * m
    res = lay.call(kernel, operands, in_specs, out_shape, out_specs, [cdt] * m,
                   "spikefuse_tpu_scan_fwd")
    n_out = len(out_dtypes)
    return (tuple(lay.out_seq(o) for o in res[:n_out]),
            tuple(lay.out_vec(f) for f in res[n_out:n_out + m]),
            tuple(lay.out_seq(c) for c in res[n_out + m:]))


def _forward_kernel(*refs, step, T, K, cdt, block, n_x, init_kinds, kinds, n_out, n_ck):
    m = len(init_kinds)
    it = iter(refs)
    x_refs = _take(it, n_x)  # [K, bm, bd] each
    init_refs = _take(it, m)  # [bm, bd] each, or SMEM [1, 1]
    p_refs = _take(it, len(kinds))  # [bm, bd] each, or SMEM [1, 1]
    out_refs = _take(it, n_out)  # [K, bm, bd] each
    fin_refs = _take(it, m)  # [bm, bd] each
    ck_refs = _take(it, m if n_ck else 0)  # [bm, bd] each: row max(c - 1, 0)
    state_refs = _take(it, m)  # VMEM scratch [bm, bd] each: the state between chunks
    c = pl.program_id(2)

    @pl.when(c == 0)
    def _():
        for ref, r, k in zip(state_refs, init_refs, init_kinds):
            ref[...] = _value(r, k, block, cdt)

    for ref, s in zip(ck_refs, state_refs):  # the state at the start of chunk c
        ref[...] = s[...]
    params = tuple(_value(r, k, block, cdt) for r, k in zip(p_refs, kinds))

    def run(steps):
        state = tuple(s[...] for s in state_refs)
        for k in range(steps):
            outs, state = step(state, tuple(r[k].astype(cdt) for r in x_refs), params)
            for ref, o in zip(out_refs, outs):
                ref[k] = o.astype(ref.dtype)
        for ref, v in zip(state_refs, state):
            ref[...] = v
        for ref, v in zip(fin_refs, state):  # written back after the last chunk
            ref[...] = v.astype(ref.dtype)

    _by_chunk_length(run, c, T, K)


def _by_chunk_length(run, chunk, T, K):
    """``run(K)`` for full chunks, ``run(T % K)`` for a shorter last one (static bodies)."""
    n_full, rem = divmod(T, K)
    if not rem:
        run(K)
        return
    if n_full:
        pl.when(chunk < n_full)(lambda: run(K))
    pl.when(chunk == n_full)(lambda: run(rem))


# -- backward -----------------------------------------------------------------------------
def scan_backward(step: Callable, xs: Sequence, init: Sequence, cks: Sequence,
                  params: Sequence, d_outs: Sequence, d_finals: Sequence, *,
                  config: TpuScanConfig, interpret: Interpret, want_x: Sequence[bool],
                  want_init: Sequence[bool], want_params: Sequence[bool]):
    """BPTT through `scan_forward`'s computation, in one TPU kernel (`scan.scan_backward`'s
    contract).

    Args:
      step, xs, init, params, config, interpret: as given to `scan_forward`.
      cks: the checkpoints it returned (``()`` when there are none, T <= K).
      d_outs: per per-step output of ``step``, its cotangent (like ``xs``) or None for zero.
      d_finals: per state leaf, the cotangent of its final value or None for zero.
      want_x, want_init, want_params: which gradients to compute, one flag per input,
        state leaf and parameter.

    Returns:
      ``(dxs, dinit, dparams)``, tuples with None for what was not asked for: ``dxs[i]`` is
      like ``xs[i]`` in its dtype; ``dinit`` and ``dparams`` hold per-neuron gradients in
      the compute dtype (parameters' summed over time). The caller reduces the per-neuron
      gradients of one-value operands to their shape.
    """
    xs, init, cks, params = tuple(xs), tuple(init), tuple(cks), tuple(params)
    d_outs, d_finals = tuple(d_outs), tuple(d_finals)
    lay, init, params, cdt = _prepare(xs, init, params, config, interpret)
    m = len(init)
    n_ck = num_checkpoints(lay.T, lay.K)
    ck_shapes = {(n_ck, lay.N), (n_ck, lay.M, lay.D)}
    if len(cks) != (m if n_ck else 0) or any(tuple(c.shape) not in ck_shapes for c in cks):
        raise ValueError(f"cks must hold {m} arrays of shape ({n_ck}, {lay.N}) or "
                         f"({n_ck}, {lay.M}, {lay.D}) for chunk {lay.K}")
    if len(d_finals) != m or len(want_init) != m or len(want_x) != len(xs) \
            or len(want_params) != len(params):
        raise ValueError("one cotangent per state leaf and one flag per input, state leaf "
                         "and parameter are needed")
    kernel = functools.partial(
        _backward_kernel, step=step, T=lay.T, K=lay.K, cdt=cdt, block=lay.block,
        n_x=len(xs), init_kinds=_kinds(init), kinds=_kinds(params), n_ck=n_ck,
        has_dout=tuple(d is not None for d in d_outs),
        has_dfin=tuple(d is not None for d in d_finals), want_x=tuple(map(bool, want_x)),
        want_init=tuple(map(bool, want_init)), want_params=tuple(map(bool, want_params)))
    present_outs = [lay.seq(d) for d in d_outs if d is not None]
    present_fins = [lay.vec(d, "a final-state cotangent") for d in d_finals if d is not None]
    operands = [*(lay.seq(x) for x in xs), *init, *(lay.seq(c) for c in cks), *params,
                *present_outs, *present_fins]
    in_specs = ([lay.seq_spec(True)] * len(xs) + [lay.vec_spec(s) for s in _kinds(init)]
                + [lay.ck_spec(True)] * len(cks) + [lay.vec_spec(s) for s in _kinds(params)]
                + [lay.seq_spec(True)] * len(present_outs)
                + [lay.vec_spec()] * len(present_fins))
    T, M, D = lay.T, lay.M, lay.D
    x_out = [i for i, w in enumerate(want_x) if w]
    n_vec = sum(map(bool, want_init)) + sum(map(bool, want_params))
    out_shape = [((T, M, D), xs[i].dtype) for i in x_out] + [((M, D), cdt)] * n_vec
    out_specs = [lay.seq_spec(True)] * len(x_out) + [lay.vec_spec()] * n_vec
    n_acc = sum(map(bool, want_params))
    res = iter(lay.call(kernel, operands, in_specs, out_shape, out_specs, [cdt] * (m + n_acc),
                        "spikefuse_tpu_scan_bwd"))
    dxs = tuple(lay.out_seq(next(res)) if w else None for w in want_x)
    dinit = tuple(lay.out_vec(next(res)) if w else None for w in want_init)
    dparams = tuple(lay.out_vec(next(res)) if w else None for w in want_params)
    return dxs, dinit, dparams


def _backward_kernel(*refs, step, T, K, cdt, block, n_x, init_kinds, kinds, n_ck, has_dout,
                     has_dfin, want_x, want_init, want_params):
    m = len(init_kinds)
    it = iter(refs)
    x_refs = _take(it, n_x)  # [K, bm, bd] each: chunk nT - 1 - c
    init_refs = _take(it, m)  # [bm, bd] each, or SMEM [1, 1]
    ck_refs = _take(it, m if n_ck else 0)  # [bm, bd] each: the state at the chunk's start
    p_refs = _take(it, len(kinds))  # [bm, bd] each, or SMEM [1, 1]
    dout_refs = tuple(next(it) if h else None for h in has_dout)  # [K, bm, bd] or absent
    dfin_refs = tuple(next(it) if h else None for h in has_dfin)  # [bm, bd] or absent
    dx_refs = {i: next(it) for i, w in enumerate(want_x) if w}  # [K, bm, bd] each
    dinit_refs = tuple(next(it) if w else None for w in want_init)  # [bm, bd] each
    dp_refs = {i: next(it) for i, w in enumerate(want_params) if w}  # [bm, bd] each
    dstate_refs = _take(it, m)  # VMEM scratch [bm, bd]: the state cotangent between chunks
    acc_refs = tuple(it)  # VMEM scratch [bm, bd]: a wanted parameter's gradient so far

    c = pl.program_id(2)
    n_chunks = -(-T // K)
    chunk = n_chunks - 1 - c  # the time chunk this grid step works on
    zero = jnp.zeros(block, cdt)
    wx, wp = tuple(dx_refs), tuple(dp_refs)  # the indices of the wanted gradients

    @pl.when(c == 0)
    def _():
        for ref, d in zip(dstate_refs, dfin_refs):
            ref[...] = zero if d is None else d[...].astype(cdt)
        for ref in acc_refs:
            ref[...] = zero

    params = tuple(_value(r, k, block, cdt) for r, k in zip(p_refs, kinds))
    init = tuple(_value(r, k, block, cdt) for r, k in zip(init_refs, init_kinds))
    if ck_refs:
        start = tuple(jnp.where(chunk == 0, v0, r[...]) for v0, r in zip(init, ck_refs))
    else:
        start = init

    def run(steps):
        xs = [tuple(r[k].astype(cdt) for r in x_refs) for k in range(steps)]
        # Recompute the chunk's states from its checkpoint.
        before, state = [], start
        for k in range(steps):
            before.append(state)
            if k + 1 < steps:
                state = tuple(step(state, xs[k], params)[1])
        d_state = tuple(r[...] for r in dstate_refs)
        acc = tuple(r[...] for r in acc_refs)
        for k in reversed(range(steps)):
            d_out = tuple(zero if r is None else r[k].astype(cdt) for r in dout_refs)
            d_state, dxw, dpw = step_vjp(step, before[k], xs[k], params, wx, wp, d_out,
                                         d_state)
            for i, g in zip(wx, dxw):
                dx_refs[i][k] = g.astype(dx_refs[i].dtype)
            acc = tuple(a + g for a, g in zip(acc, dpw))
        for ref, v in zip(dstate_refs, d_state):
            ref[...] = v
        for ref, v in zip(acc_refs, acc):
            ref[...] = v
        # Written back after the last grid step (chunk 0): the gradients of the initial
        # states and the per-neuron parameter gradients summed over time.
        for ref, v in zip(dinit_refs, d_state):
            if ref is not None:
                ref[...] = v
        for i, a in zip(wp, acc):
            dp_refs[i][...] = a

    _by_chunk_length(run, chunk, T, K)
