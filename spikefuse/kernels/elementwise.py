"""Elementwise spike kernels: H(x - thr) forward and t * g'(x - thr) backward, one pass each.

Data layout: every operand is viewed as a flat vector of n = x.size elements (a free reshape)
and cut into 1-D blocks of `block_size` (a power of two) elements; program i of a 1-D grid
owns elements [i * block_size, (i + 1) * block_size). The last block may be ragged: its loads
and stores are masked, because the Triton lowering does not mask plain ref accesses.

    heaviside  reads  x [n], thr [n] or [1]                       writes H [n]   (x.dtype)
    grad_mul   reads  x [n], thr [n] or [1], t [n], params [n] or [1] each
                                                                   writes t*g' [n] (t.dtype)

x - thr and g' exist only in registers. Nothing is saved for a backward: the backward of the
spike op is `grad_mul` itself, which recomputes x - thr from x and thr.

Scalar operands (thr and params with one element) travel as [1] arrays loaded once per
program, so a new value is a new traced operand, never a recompilation. Other operands that
broadcast to x are materialised by `jnp.broadcast_to` (n * itemsize extra bytes written and
read once per call); operands with x's exact shape are flattened for free.

Indices are int32 inside the kernel. An array with more elements than one call can index is
split into chunks of at most `_INDEX_LIMIT - block_size` elements, one `pallas_call` each,
joined by `jnp.concatenate` (one extra copy, only for those huge arrays); anything smaller is
one `pallas_call` on the flat operands, with no extra pass over memory.
"""

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.typing import ArrayLike, DTypeLike

from spikefuse.kernels import _compat
from spikefuse.kernels.sharding import check_interpret, match_varying, out_struct

__all__ = ["ElementwiseConfig", "default_config", "heaviside", "grad_mul", "spike_math"]

# Elements one call may cover: in-kernel indices are int32 and reach n + block_size - 1.
_INDEX_LIMIT = 2**31
# Triton's largest tensor (elements); a block is one tensor.
_MAX_BLOCK = 2**20


def _is_power_of_two(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


@dataclasses.dataclass(frozen=True)
class ElementwiseConfig:
    """Launch configuration of the elementwise kernels.

    Attributes:
        block_size: elements per program; a power of two (Triton needs every in-kernel array
            to have a power-of-two size), at most 2**20.
        num_warps: warps per program (Triton); a power of two. Ignored when interpreting.
        num_stages: Triton software-pipelining stages. Ignored when interpreting.
    """

    block_size: int
    num_warps: int
    num_stages: int

    def __post_init__(self) -> None:
        if not (_is_power_of_two(self.block_size) and self.block_size <= _MAX_BLOCK):
            raise ValueError(
                f"block_size must be a power of two <= {_MAX_BLOCK}, got {self.block_size}")
        if not _is_power_of_two(self.num_warps):
            raise ValueError(f"num_warps must be a power of two, got {self.num_warps}")
        if self.num_stages < 1:
            raise ValueError(f"num_stages must be >= 1, got {self.num_stages}")


def default_config(n: int, dtype: DTypeLike) -> ElementwiseConfig:
    """The heuristic launch configuration for ``n`` elements of ``dtype``.

    Each thread moves 32 bytes per operand (two 16-byte vector accesses) with 4 warps: 1024
    f32, 2048 bf16/f16 or 512 f64 elements per program. Arrays smaller than that get one
    block of the next power of two and proportionally fewer warps.
    """
    per_thread = max(1, 32 // jnp.dtype(dtype).itemsize)
    block_size = min(4 * 32 * per_thread, pl.next_power_of_2(max(int(n), 1)))
    num_warps = min(4, max(1, block_size // (32 * per_thread)))
    return ElementwiseConfig(block_size=block_size, num_warps=num_warps, num_stages=1)


def heaviside(x: ArrayLike, thr: ArrayLike, *, interpret: bool,
              config: ElementwiseConfig | None = None) -> jax.Array:
    """``H(x - thr)``: 1 where ``x - thr >= 0``, else 0 (NaN gives 0), in one pass.

    x - thr is computed and compared in the compute dtype (f32 for bf16/f16 inputs).

    Args:
        x: floating array, any shape.
        thr: array broadcastable to ``x.shape``; 0-d typical, per-element allowed.
        interpret: run the kernel in Pallas interpret mode (CPU) instead of Triton.
        config: launch configuration; ``default_config(x.size, x.dtype)`` when None.

    Returns:
        An array of ``x.shape`` and ``x.dtype`` holding 0 and 1.

    Example:
        >>> heaviside(jnp.array([-1.0, 0.0, 2.0, jnp.nan]), 0.0, interpret=True)
        Array([0., 1., 1., 0.], dtype=float32)
    """
    x = jnp.asarray(x)
    _check_float("x", x.dtype)
    return _launch(x, thr, None, (), None, x.dtype, interpret, config)


def grad_mul(x: ArrayLike, thr: ArrayLike, t: ArrayLike, params: tuple[ArrayLike, ...],
             grad_fn: Callable[..., jax.Array], *, interpret: bool,
             config: ElementwiseConfig | None = None) -> jax.Array:
    """``t * grad_fn(x - thr, *params)`` elementwise, in one pass.

    Args:
        x: floating array, any shape.
        thr: array broadcastable to ``x.shape``.
        t: floating array of ``x.shape`` (the cotangent).
        params: tuple of arrays broadcastable to ``x.shape`` (0-d scalars typical).
        grad_fn: a static Python callable of jnp ops, ``grad_fn(d, *params)``; it is traced
            inside the kernel body with ``d`` and ``params`` in the compute dtype (f32 for
            bf16/f16 inputs), so it may only use ops the Triton lowering accepts.
        interpret: run the kernel in Pallas interpret mode (CPU) instead of Triton.
        config: launch configuration; ``default_config(x.size, x.dtype)`` when None.

    Returns:
        An array of ``x.shape`` and ``t.dtype``.

    Example:
        >>> rect = lambda d, w: jnp.where(jnp.abs(d) < w / 2, 1 / w, 0.0)
        >>> grad_mul(jnp.array([0.1, 0.9]), 0.0, jnp.array([3.0, 3.0]), (1.0,), rect,
        ...          interpret=True)
        Array([3., 0.], dtype=float32)
    """
    x, t = jnp.asarray(x), jnp.asarray(t)
    _check_float("x", x.dtype)
    _check_float("t", t.dtype)
    if t.shape != x.shape:
        raise ValueError(f"t must have x's shape {x.shape}, got {t.shape}")
    return _launch(x, thr, t, tuple(params), grad_fn, t.dtype, interpret, config)


def _check_float(name: str, dtype: DTypeLike) -> None:
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype, got {dtype}")


def _launch(x, thr, t, params, grad_fn, out_dtype, interpret, config):
    n = x.size
    if n == 0:
        return jnp.zeros(x.shape, out_dtype)
    if config is None:
        config = default_config(n, x.dtype)
    # The compute dtype, decided once: bf16/f16 -> f32, f32 -> f32, f64 -> f64.
    compute_dtype = jnp.promote_types(
        x.dtype if t is None else jnp.promote_types(x.dtype, t.dtype), jnp.float32)

    # Operands in kernel order: x, thr, [t], *params; each is [n], or [1] for a scalar.
    operands = [(x.reshape(n), False), _flat_operand(thr, x.shape, compute_dtype, "thr")]
    if t is not None:
        operands.append((t.reshape(n), False))
    operands += [_flat_operand(p, x.shape, compute_dtype, f"params[{i}]")
                 for i, p in enumerate(params)]
    is_scalar = tuple(s for _, s in operands)

    bounds = _chunks(n, config.block_size)
    if len(bounds) == 1:  # every normal size: the flat operands go straight in
        out = _pallas([o for o, _ in operands], n, is_scalar, grad_fn, compute_dtype,
                      out_dtype, interpret, config)
    else:
        out = jnp.concatenate([
            _pallas([o if s else o[start:stop] for o, s in operands], stop - start, is_scalar,
                    grad_fn, compute_dtype, out_dtype, interpret, config)
            for start, stop in bounds])
    return out.reshape(x.shape)


def _flat_operand(a: ArrayLike, shape: Sequence[int], compute_dtype: DTypeLike,
                  name: str) -> tuple[jax.Array, bool]:
    """(``a`` as [1], True) for one element, cast now as it is tiny; else (``a`` as [n], False),
    kept in its dtype and cast in the kernel."""
    a, shape = jnp.asarray(a), tuple(shape)
    try:
        broadcastable = np.broadcast_shapes(a.shape, shape) == shape
    except ValueError:
        broadcastable = False
    if not broadcastable:
        raise ValueError(f"{name} of shape {a.shape} does not broadcast to x's shape {shape}")
    if a.size == 1:
        return a.reshape(1).astype(compute_dtype), True
    if a.shape != shape:
        # Materialised: n * itemsize extra bytes written here and read by the kernel.
        a = jnp.broadcast_to(a, shape)
    return a.reshape(-1), False


def _chunks(n: int, block_size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of at most ``_INDEX_LIMIT - block_size`` elements covering [0, n).

    With chunk <= _INDEX_LIMIT - block_size, the largest in-kernel index,
    cdiv(chunk, block_size) * block_size - 1, stays below _INDEX_LIMIT (int32 for 2**31).
    """
    step = _INDEX_LIMIT - block_size
    if step <= 0:
        raise ValueError(f"block_size {block_size} leaves no room under {_INDEX_LIMIT}")
    return [(start, min(start + step, n)) for start in range(0, n, step)]


def _triton():
    return _compat.require_pallas_triton("spikefuse.kernels.mgpu_elementwise")


def _pallas(operands, n, is_scalar, grad_fn, compute_dtype, out_dtype, interpret, config):
    plt = _triton()  # imported lazily: spikefuse imports on a jax without Triton
    block = config.block_size
    kernel = functools.partial(
        _kernel, n=n, block=block, ragged=n % block != 0, is_scalar=is_scalar,
        grad_fn=grad_fn, compute_dtype=compute_dtype, plt=plt)
    block_spec = pl.BlockSpec((block,), lambda i: (i,))
    scalar_spec = pl.BlockSpec((1,), lambda i: (0,))
    compiler_params = None if interpret else plt.CompilerParams(
        num_warps=config.num_warps, num_stages=config.num_stages)
    check_interpret(operands, interpret)
    operands = match_varying(*operands)  # inside a shard_map: one set of varying axes
    return pl.pallas_call(
        kernel,
        out_shape=out_struct((n,), out_dtype, like=operands[0]),
        grid=(pl.cdiv(n, block),),
        in_specs=[scalar_spec if s else block_spec for s in is_scalar],
        out_specs=block_spec,
        compiler_params=compiler_params,
        interpret=interpret,
        name="spikefuse_heaviside" if grad_fn is None else "spikefuse_grad_mul",
    )(*operands)


def spike_math(values: Sequence[jax.Array],
               grad_fn: Callable[..., jax.Array] | None) -> jax.Array:
    """The computation of every family's elementwise kernel body, on loaded values in the
    compute dtype ``(x, thr, [t, *params])``: ``x - thr >= 0`` (NaN gives False) when
    ``grad_fn`` is None, else ``t * grad_fn(x - thr, *params)``."""
    d = values[0] - values[1]  # x - thr, in the compute dtype
    if grad_fn is None:
        return d >= 0  # NaN compares false -> 0
    t, *params = values[2:]
    return t * grad_fn(d, *params)


def _kernel(*refs, n, block, ragged, is_scalar, grad_fn, compute_dtype, plt):
    # refs: x_ref [BLOCK], thr_ref [BLOCK] or [1], (t_ref [BLOCK], *p_refs [BLOCK] or [1]),
    #       o_ref [BLOCK]. grad_fn None (heaviside) or not (grad_mul) is the only variant.
    *in_refs, o_ref = refs
    if ragged:
        # The last block runs past n: Triton does not mask plain ref accesses, and interpret
        # mode pads with NaN, so mask loads and the store. Indices fit int32 (see _chunks).
        idx = pl.program_id(0) * block + jnp.arange(block, dtype=jnp.int32)
        mask = idx < n
    else:
        mask = None

    def load(ref, scalar):
        if scalar:
            value = ref[0]  # [1] -> 0-d, broadcast by the ops below
        elif mask is None:
            value = ref[...]
        else:
            # `other` in the ref's dtype: a Python 0 would be int64 under jax_enable_x64.
            value = plt.load(ref.at[pl.ds(0, block)], mask=mask, other=np.zeros((), ref.dtype))
        return value.astype(compute_dtype)

    values = [load(ref, s) for ref, s in zip(in_refs, is_scalar)]
    out = jnp.broadcast_to(spike_math(values, grad_fn), (block,)).astype(o_ref.dtype)
    if mask is None:
        o_ref[...] = out
    else:
        plt.store(o_ref.at[pl.ds(0, block)], out, mask=mask)
