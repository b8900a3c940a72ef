"""Elementwise spike kernels for TPU (Pallas Mosaic): H(x - thr) forward, t * g'(x - thr) backward.

The same operations and call signatures as `elementwise` (the GPU kernels); only the layout
differs, because a TPU moves and computes (8, 128) tiles (16 x 128 for 2-byte dtypes), not
flat vectors.

Data layout
-----------
``x`` of shape ``[*lead, D]`` is viewed as a 2-D array ``[M, D]`` with M = prod(lead): its
last (minor) dim stays the lane dim. XLA stores a TPU array in tiles over its last two dims,
so this view is free whenever XLA's own tiling already agrees (rank <= 2, or a second-minor
dim that is a multiple of the sublane tile), and the kernel then moves exactly the bytes XLA's
own fused code would (a minor dim that is not a multiple of 128 is padded in HBM either way).
Flattening to [n] (the GPU layout) would instead cost a relayout copy of every operand on a
TPU. Rank 1 is viewed as [n / 128, 128] when 128 divides n, else [1, n]; rank 0 as [1, 1].

A 2-D grid ``(cdiv(M, bm), cdiv(D, bd))``, both axes "parallel", gives each program one
``(bm, bd)`` block: bm a multiple of 16 (or all of M), bd a multiple of 128 (or all of D).
A ragged last block in either dim is exact without masks: Pallas TPU reads it padded with
unspecified values and drops its out-of-bounds writes, and the computation is elementwise,
so nothing out of bounds reaches a result.

    heaviside  reads  x [M, D], thr                                 writes H [M, D]   (x.dtype)
    grad_mul   reads  x [M, D], thr, t [M, D], params each          writes t*g' [M, D] (t.dtype)

Operands other than x and t (thr, params) travel in the cheapest form that broadcasts:
one element -> a [1, 1] scalar in SMEM (a new value is a new operand, never a recompilation);
one value per feature (shape ``[..., 1, D]`` with leading 1s) -> a [1, D] row, block (1, bd),
shared by every row block; anything else is materialised to x's shape by
``jnp.broadcast_to`` (n * itemsize extra bytes). Bytes per element (b = itemsize): heaviside
2b, grad_mul 3b (+ b per per-element parameter); the same as XLA's fused elementwise code.

x - thr and g' exist only in vector registers, computed in f32 for bf16/f16 I/O. Nothing is
saved for a backward: the backward of the spike is `grad_mul` itself, which recomputes
x - thr. Mosaic has no float64: f64 inputs run only in interpret mode.
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
from jax.experimental.pallas import tpu as pltpu
from jax.typing import ArrayLike, DTypeLike

from spikefuse.kernels.elementwise import spike_math
from spikefuse.kernels.sharding import check_interpret, match_varying, out_struct

__all__ = ["TpuElementwiseConfig", "Interpret", "default_config", "grad_mul", "heaviside",
           "interpret_mode", "view"]

Interpret = bool | pltpu.InterpretParams
"""How a TPU kernel runs: ``False`` compiled by Mosaic (on a TPU); ``True`` run by Pallas'
interpreter as XLA code on any machine (what ``backend="interpret_tpu"`` uses: it passes
through every jax transformation and sharding); a ``pltpu.InterpretParams`` in Pallas' TPU
interpret mode, a simulator of the TPU's memories that also randomises the order of the
"parallel" grid dims and refuses out-of-bounds reads and revisited output blocks (its
ordered IO callbacks keep it out of ``jax.checkpoint`` and ``custom_partitioning``, so the
tests call the kernels directly with it)."""


def interpret_mode(interpret: Interpret) -> Interpret:
    """``interpret`` checked, as ``pallas_call``'s ``interpret=`` argument (see `Interpret`)."""
    if isinstance(interpret, pltpu.InterpretParams):
        return interpret
    if isinstance(interpret, (bool, np.bool_)):
        return bool(interpret)
    raise TypeError(f"interpret must be a bool or a pltpu.InterpretParams, got "
                    f"{type(interpret).__name__}")

_LANES = 128
_SUBLANES = 16  # the row tile of 2-byte dtypes; a multiple of f32's 8
# Elements per block (~1 MiB per f32 operand buffer): big enough that the per-grid-step cost
# (~0.35 us) stays small against the block's HBM time, small enough that every operand
# double-buffered fits the default scoped VMEM (16 MiB on v5e). Not tuned on a TPU.
_BLOCK_ELEMENTS = 256 * 1024
_MAX_COLS = 2048


@dataclasses.dataclass(frozen=True)
class TpuElementwiseConfig:
    """Block shape of the TPU elementwise kernels over the ``[M, D]`` view of x.

    Attributes:
        block_rows: rows per block, a positive multiple of 16 (bf16/f16's sublane tile, and
            a multiple of f32's 8); a larger value than M means all of M.
        block_cols: columns per block, a positive multiple of 128 (the lane width); a larger
            value than D means all of D.
    """

    block_rows: int
    block_cols: int

    def __post_init__(self) -> None:
        if not (isinstance(self.block_rows, int) and self.block_rows > 0
                and self.block_rows % _SUBLANES == 0):
            raise ValueError(f"block_rows must be a positive multiple of {_SUBLANES}, "
                             f"got {self.block_rows}")
        if not (isinstance(self.block_cols, int) and self.block_cols > 0
                and self.block_cols % _LANES == 0):
            raise ValueError(f"block_cols must be a positive multiple of {_LANES}, "
                             f"got {self.block_cols}")


def view(shape: Sequence[int]) -> tuple[int, int]:
    """The ``[M, D]`` view of an array of ``shape`` the kernels work on (see the module
    docstring): the last dim kept, the others merged; rank 1 as ``[n / 128, 128]`` or
    ``[1, n]``, rank 0 as ``[1, 1]``."""
    shape = tuple(int(s) for s in shape)
    if not shape:
        return 1, 1
    if len(shape) == 1:
        n = shape[0]
        return (n // _LANES, _LANES) if n and n % _LANES == 0 else (1, n)
    return math.prod(shape[:-1]), shape[-1]


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def default_config(M: int, D: int, dtype: DTypeLike) -> TpuElementwiseConfig:
    """The heuristic block shape for an ``[M, D]`` view (not tuned on a TPU).

    Columns: all of D up to 2048 lanes, else 2048. Rows: as many as keep a block near
    256 K elements (1 MiB of f32), a multiple of 16; 2-byte dtypes get the same element
    count (half the bytes). A block larger than the array is cut to it at launch.
    """
    del dtype  # one element budget for every dtype, for now
    cols = _MAX_COLS if D > _MAX_COLS else _round_up(max(int(D), 1), _LANES)
    rows = max(_SUBLANES, _BLOCK_ELEMENTS // cols // _SUBLANES * _SUBLANES)
    return TpuElementwiseConfig(block_rows=rows, block_cols=cols)


def heaviside(x: ArrayLike, thr: ArrayLike, *, interpret: Interpret,
              config: TpuElementwiseConfig | None = None) -> jax.Array:
    """``H(x - thr)``: 1 where ``x - thr >= 0``, else 0 (NaN gives 0), in one pass (TPU).

    x - thr is computed and compared in the compute dtype (f32 for bf16/f16 inputs).

    Args:
        x: floating array, any shape.
        thr: array broadcastable to ``x.shape``; 0-d typical, per-feature or per-element
            allowed.
        interpret: ``False`` to compile the kernel with Mosaic (TPU), ``True`` to run it in
            Pallas' interpreter, or a ``pltpu.InterpretParams`` for TPU interpret mode
            (`Interpret`).
        config: block shape; ``default_config(*view(x.shape), x.dtype)`` when None.

    Returns:
        An array of ``x.shape`` and ``x.dtype`` holding 0 and 1.

    Example:
        >>> heaviside(jnp.array([-1.0, 0.0, 2.0, jnp.nan]), 0.0, interpret=True)
        Array([0., 1., 1., 0.], dtype=float32)
    """
    x = jnp.asarray(x)
    _check_float("x", x.dtype, interpret)
    return _launch(x, thr, None, (), None, x.dtype, interpret, config)


def grad_mul(x: ArrayLike, thr: ArrayLike, t: ArrayLike, params: tuple[ArrayLike, ...],
             grad_fn: Callable[..., jax.Array], *, interpret: Interpret,
             config: TpuElementwiseConfig | None = None) -> jax.Array:
    """``t * grad_fn(x - thr, *params)`` elementwise, in one pass (TPU).

    Args:
        x: floating array, any shape.
        thr: array broadcastable to ``x.shape``.
        t: floating array of ``x.shape`` (the cotangent).
        params: tuple of arrays broadcastable to ``x.shape`` (0-d scalars typical).
        grad_fn: a static Python callable of jnp ops, ``grad_fn(d, *params)``; it is traced
            inside the kernel body with ``d`` and ``params`` in the compute dtype (f32 for
            bf16/f16 inputs), so it may only use ops the Mosaic lowering accepts.
        interpret: as for `heaviside`.
        config: block shape; ``default_config(*view(x.shape), x.dtype)`` when None.

    Returns:
        An array of ``x.shape`` and ``t.dtype``.

    Example:
        >>> rect = lambda d, w: jnp.where(jnp.abs(d) < w / 2, 1 / w, 0.0)
        >>> grad_mul(jnp.array([0.1, 0.9]), 0.0, jnp.array([3.0, 3.0]), (1.0,), rect,
        ...          interpret=True)
        Array([3., 0.], dtype=float32)
    """
    x, t = jnp.asarray(x), jnp.asarray(t)
    _check_float("x", x.dtype, interpret)
    _check_float("t", t.dtype, interpret)
    if t.shape != x.shape:
        raise ValueError(f"t must have x's shape {x.shape}, got {t.shape}")
    return _launch(x, thr, t, tuple(params), grad_fn, t.dtype, interpret, config)


def _check_float(name: str, dtype: DTypeLike, interpret: Interpret) -> None:
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype, got {dtype}")
    if interpret is False and jnp.dtype(dtype).itemsize > 4:
        raise TypeError(f"{name} has dtype {dtype}: the TPU kernels compile float32, "
                        "bfloat16 and float16 only (Mosaic has no float64); use "
                        "backend='reference' for float64")


def _launch(x, thr, t, params, grad_fn, out_dtype, interpret, config):
    if x.size == 0:
        return jnp.zeros(x.shape, out_dtype)
    M, D = view(x.shape)
    if config is None:
        config = default_config(M, D, x.dtype)
    # The compute dtype, decided once: bf16/f16 -> f32, f32 -> f32, f64 -> f64.
    compute_dtype = jnp.promote_types(
        x.dtype if t is None else jnp.promote_types(x.dtype, t.dtype), jnp.float32)
    # Operands in kernel order: x, thr, [t], *params, each with its kind.
    operands = [(x.reshape(M, D), "full"), _operand(thr, x.shape, M, D, compute_dtype, "thr")]
    if t is not None:
        operands.append((t.reshape(M, D), "full"))
    operands += [_operand(p, x.shape, M, D, compute_dtype, f"params[{i}]")
                 for i, p in enumerate(params)]
    kinds = tuple(k for _, k in operands)
    interpret = interpret_mode(interpret)
    # A block larger than the array is all of it (a whole dim is always a legal block).
    bm, bd = min(config.block_rows, M), min(config.block_cols, D)
    specs = {
        "full": pl.BlockSpec((bm, bd), lambda i, j: (i, j)),
        "row": pl.BlockSpec((1, bd), lambda i, j: (0, j)),
        "scalar": pl.BlockSpec(memory_space=pltpu.SMEM),
    }
    kernel = functools.partial(_kernel, kinds=kinds, grad_fn=grad_fn,
                               compute_dtype=compute_dtype, block=(bm, bd))
    arrays = [a for a, _ in operands]
    check_interpret(arrays, interpret is not False)
    arrays = match_varying(*arrays)  # inside a shard_map: one set of varying axes
    out = pl.pallas_call(
        kernel,
        out_shape=out_struct((M, D), out_dtype, like=arrays[0]),
        grid=(pl.cdiv(M, bm), pl.cdiv(D, bd)),
        in_specs=[specs[k] for k in kinds],
        out_specs=specs["full"],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
        interpret=interpret,
        name="spikefuse_tpu_heaviside" if grad_fn is None else "spikefuse_tpu_grad_mul",
    )(*arrays)
    return out.reshape(x.shape)


def _operand(a: ArrayLike, shape: Sequence[int], M: int, D: int, compute_dtype: DTypeLike,
             name: str) -> tuple[jax.Array, str]:
    """``a`` as a [1, 1] scalar (cast now: it is tiny), a [1, D] row or an [M, D] array
    (both kept in their dtype and cast in the kernel), with that kind."""
    a, shape = jnp.asarray(a), tuple(shape)
    try:
        broadcastable = np.broadcast_shapes(a.shape, shape) == shape
    except ValueError:
        broadcastable = False
    if not broadcastable:
        raise ValueError(f"{name} of shape {a.shape} does not broadcast to x's shape {shape}")
    if a.size == 1:
        return a.reshape(1, 1).astype(compute_dtype), "scalar"
    if len(shape) >= 2 and a.shape[-1] == D and math.prod(a.shape[:-1]) == 1:
        return a.reshape(1, D), "row"  # one value per feature, shared by every row
    if a.shape != shape:
        # Materialised: n * itemsize extra bytes written here and read by the kernel.
        a = jnp.broadcast_to(a, shape)
    return a.reshape(M, D), "full"


def _kernel(*refs, kinds, grad_fn, compute_dtype, block):
    # refs: x_ref [bm, bd], thr_ref, (t_ref [bm, bd], *p_refs), o_ref [bm, bd]; thr and
    # params are [bm, bd] ("full"), [1, bd] ("row") or an SMEM [1, 1] ("scalar"). grad_fn
    # None (heaviside) or not (grad_mul) is the only variant.
    *in_refs, o_ref = refs

    def load(ref, kind):
        if kind == "scalar":
            return ref[0, 0].astype(compute_dtype)  # broadcast by the ops below
        return ref[...].astype(compute_dtype)  # [bm, bd], or [1, bd] broadcast below

    values = [load(ref, k) for ref, k in zip(in_refs, kinds)]
    o_ref[...] = jnp.broadcast_to(spike_math(values, grad_fn), block).astype(o_ref.dtype)
