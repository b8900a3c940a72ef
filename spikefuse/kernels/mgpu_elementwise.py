"""Elementwise spike kernels for Mosaic GPU (Pallas): H(x - thr) forward, t * g'(x - thr) backward.

The same operations, call signatures and computation (`elementwise.spike_math`) as the
Triton kernels (`elementwise`); what differs is how a program reaches memory and how a
kernel is launched: ``plgpu.kernel`` (jax 0.12 lowers no ``pallas_call`` through Mosaic
GPU), a 1-D grid of CTAs whose index is ``lax.axis_index`` of the grid's name.

Data layout
-----------
As for Triton: every operand is a flat vector of n = x.size elements (a free reshape) cut
into 1-D blocks of ``block`` elements; CTA i of the grid ``cdiv(n, block)`` owns one block.
A CTA is one warpgroup (128 threads), and Mosaic GPU lays a 1-D register array over those
threads, so a block is a multiple of 128 elements (`mgpu_launch`: 32 bytes per thread per
operand by default).

    heaviside  reads  x [n], thr [n] or [1]                       writes H [n]   (x.dtype)
    grad_mul   reads  x [n], thr [n] or [1], t [n], params [n] or [1] each
                                                                   writes t*g' [n] (t.dtype)

Ragged tails without masks. Mosaic GPU has no masked loads or stores, so the last CTA's
block is moved back to end at n: it starts at ``min(i * block, n - block)`` and overlaps its
neighbour; the elements in the overlap are computed twice from the same inputs and written
twice with the same value (the computation is elementwise, so this is exact). That needs
n >= block: the block shrinks to the largest multiple of 128 not above n, and an array of
fewer than 128 elements is padded to 128 (a copy of under 128 elements; the result is cut
back). Loads and stores are direct, global memory <-> registers, on every architecture.

Scalar operands (thr and params with one element) travel as [1] arrays read once per CTA,
so a new value is a new operand, never a recompilation. x - thr and g' exist only in
registers, in f32 for bf16/f16 inputs. Nothing is saved for a backward: the backward of the
spike op is `grad_mul` itself. Indices are int32 (under ``jax_enable_x64`` too); arrays of
2**31 elements or more are cut into several kernel calls as for Triton.

Ops Mosaic GPU cannot lower
---------------------------
Kernel bodies go through `lowerable` first: calls (``custom_jvp``, ``custom_vjp``, ``jit``)
are inlined — the kernel is never differentiated, and Mosaic GPU in jax 0.10/0.11 cannot
lower ``custom_jvp_call``. Ops Mosaic GPU lacks are rewritten: ``stop_gradient`` (a step's
detached reset; up to jax 0.12 Mosaic GPU has no rule for it) becomes the identity, as any
derivative in the body was taken while tracing it; ``add_any`` (how a VJP sums
cotangents) becomes ``add``, a ``select_n`` on a scalar predicate gets the predicate
broadcast, ``pow`` (QPseudoSpike's
g' uses it) becomes ``exp(y * log|x|)`` with IEEE ``pow``'s signs and special values, whose
relative error grows with ``|y * log x|`` (about that many ulps); a float ``rem`` (fmod;
SquarewaveFourierSeries reduces ``|x| > 2**100`` with it) becomes ``x - y * trunc(x / y)``,
exact while ``|x / y| < 2**24`` and only finite beyond. Any other op Mosaic GPU cannot lower
fails while lowering, naming the op.

How a kernel runs (``interpret``)
---------------------------------
``False``: compiled by Mosaic GPU (on a GPU; ``jax.export`` for cuda from any machine).
A ``plgpu.InterpretGPUParams`` (`_compat.interpret_gpu_params`): ``plgpu.kernel`` in Mosaic
GPU interpret mode, a simulation of a GPU's memories and threads on CPU (ordered IO
callbacks: call it directly, not inside a ``custom_partitioning`` or ``jax.checkpoint``).
``True``: the same kernel body under Pallas' generic interpreter (a ``pallas_call`` whose
programs run in order, each seeing the whole arrays; the block index from
``pl.program_id``), which passes through every jax transformation — what
``backend="interpret_mgpu"`` runs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.extend import core as jcore
from jax.typing import ArrayLike, DTypeLike

from spikefuse.kernels import _compat, mgpu_launch
from spikefuse.kernels.elementwise import _chunks, _flat_operand, spike_math
from spikefuse.kernels.mgpu_launch import LANES
from spikefuse.kernels.sharding import check_interpret, match_varying, out_struct

__all__ = ["REWRITTEN", "MgpuElementwiseConfig", "axis_index", "default_config", "grad_mul",
           "heaviside", "interpret_mode", "launch", "lowerable", "program_id"]

Interpret = Any  # bool, or a plgpu.InterpretGPUParams (see the module docstring)


@dataclasses.dataclass(frozen=True)
class MgpuElementwiseConfig:
    """Launch configuration of the Mosaic GPU elementwise kernels.

    Attributes:
        block_size: elements per CTA, a positive multiple of 128 (one warpgroup); cut to
            the largest multiple of 128 not above n at launch.
    """

    block_size: int

    def __post_init__(self) -> None:
        if not (isinstance(self.block_size, int) and self.block_size > 0
                and self.block_size % LANES == 0):
            raise ValueError(f"block_size must be a positive multiple of {LANES}, got "
                             f"{self.block_size}")


def default_config(n: int, dtype: DTypeLike) -> MgpuElementwiseConfig:
    """The launch configuration for ``n`` elements of ``dtype`` on the architecture being
    compiled for (`mgpu_launch.for_arch`): 32 bytes per thread per operand, 1024 f32
    elements per CTA; cut to the array."""
    block = mgpu_launch.for_arch().elementwise_block(dtype)
    return MgpuElementwiseConfig(block_size=_fit(block, n))


def _fit(block: int, n: int) -> int:
    """``block`` cut to the largest multiple of 128 not above ``n`` (at least 128)."""
    return max(LANES, min(block, n // LANES * LANES))


def interpret_mode(interpret: Interpret) -> Interpret:
    """``interpret`` checked: a bool or a ``plgpu.InterpretGPUParams``."""
    if isinstance(interpret, bool) or _compat.is_interpret_gpu_params(interpret):
        return interpret
    raise TypeError(f"interpret must be a bool or a plgpu.InterpretGPUParams, got "
                    f"{type(interpret).__name__}")


def heaviside(x: ArrayLike, thr: ArrayLike, *, interpret: Interpret,
              config: MgpuElementwiseConfig | None = None) -> jax.Array:
    """``H(x - thr)``: 1 where ``x - thr >= 0``, else 0 (NaN gives 0), in one pass (Mosaic GPU).

    Args:
        x: floating array, any shape.
        thr: array broadcastable to ``x.shape``; 0-d typical, per-element allowed.
        interpret: ``False`` to compile with Mosaic GPU, ``True`` for Pallas' interpreter,
            a ``plgpu.InterpretGPUParams`` for Mosaic GPU interpret mode.
        config: launch configuration; `default_config` when None.

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
             grad_fn: Callable[..., jax.Array], *, interpret: Interpret,
             config: MgpuElementwiseConfig | None = None) -> jax.Array:
    """``t * grad_fn(x - thr, *params)`` elementwise, in one pass (Mosaic GPU).

    Args:
        x: floating array, any shape.
        thr: array broadcastable to ``x.shape``.
        t: floating array of ``x.shape`` (the cotangent).
        params: tuple of arrays broadcastable to ``x.shape`` (0-d scalars typical).
        grad_fn: a static Python callable of jnp ops, ``grad_fn(d, *params)``, traced inside
            the kernel body in the compute dtype (through `lowerable`).
        interpret: as for `heaviside`.
        config: launch configuration; `default_config` when None.

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
    interpret = interpret_mode(interpret)
    if n == 0:
        return jnp.zeros(x.shape, out_dtype)
    if config is None:
        config = default_config(n, x.dtype)
    compute_dtype = jnp.promote_types(
        x.dtype if t is None else jnp.promote_types(x.dtype, t.dtype), jnp.float32)
    operands = [(x.reshape(n), False), _flat_operand(thr, x.shape, compute_dtype, "thr")]
    if t is not None:
        operands.append((t.reshape(n), False))
    operands += [_flat_operand(p, x.shape, compute_dtype, f"params[{i}]")
                 for i, p in enumerate(params)]
    is_scalar = tuple(s for _, s in operands)
    padded = max(n, LANES)  # fewer than 128 elements: padded to one block
    if padded != n:
        operands = [(o if s else jnp.pad(o, (0, padded - n)), s) for o, s in operands]
    block = _fit(config.block_size, padded)
    bounds = _chunks(padded, block)
    out = jnp.concatenate([
        _call([o if s else o[start:stop] for o, s in operands], stop - start, block,
              is_scalar, grad_fn, compute_dtype, out_dtype, interpret)
        for start, stop in bounds]) if len(bounds) > 1 else _call(
        [o for o, _ in operands], padded, block, is_scalar, grad_fn, compute_dtype,
        out_dtype, interpret)
    return (out if padded == n else out[:n]).reshape(x.shape)


def _call(operands, n, block, is_scalar, grad_fn, compute_dtype, out_dtype, interpret):
    block = _fit(block, n)  # a short last chunk of a huge array
    kernel = functools.partial(
        _kernel, n=n, block=block, is_scalar=is_scalar,
        grad_fn=None if grad_fn is None else lowerable(grad_fn), compute_dtype=compute_dtype)
    check_interpret(operands, interpret is True)
    operands = match_varying(*operands)  # inside a shard_map: one set of varying axes
    name = "spikefuse_mgpu_heaviside" if grad_fn is None else "spikefuse_mgpu_grad_mul"
    return launch(kernel, operands, [out_struct((n,), out_dtype, like=operands[0])],
                  pl.cdiv(n, block), interpret, name)[0]


def _kernel(*refs, index, n, block, is_scalar, grad_fn, compute_dtype):
    # refs: x_ref [n], thr_ref [n] or [1], (t_ref [n], *p_refs [n] or [1]), o_ref [n]: whole
    # arrays in global memory; this CTA reads and writes [start, start + block).
    *in_refs, o_ref = refs
    start = jnp.minimum(index() * block, n - block).astype(jnp.int32)  # the last overlaps
    window = pl.ds(start, block)

    def load(ref, scalar):
        value = ref[0] if scalar else ref[window]  # [1] -> 0-d, broadcast by the ops below
        return value.astype(compute_dtype)

    values = [load(ref, s) for ref, s in zip(in_refs, is_scalar)]
    out = jnp.broadcast_to(spike_math(values, grad_fn), (block,))
    o_ref[window] = out.astype(o_ref.dtype)


# -- launching: compiled, Mosaic GPU interpret mode, or Pallas' interpreter ----------------
_GRID = "spikefuse_cta"


def axis_index():
    """The CTA's index in a compiled (or Mosaic-GPU-interpreted) `launch`."""
    return lax.axis_index(_GRID)


def program_id():
    """The program's index under Pallas' generic interpreter (`launch` with True)."""
    return pl.program_id(0)


def launch(body: Callable, operands: Sequence, out_shape: Sequence, grid: int,
           interpret: Interpret, name: str) -> list:
    """Runs ``body(*in_refs, *out_refs, index=...)`` on a 1-D grid of ``grid`` CTAs; every
    ref is a whole array in global memory and ``index()`` gives the CTA's index (int32).

    ``interpret``: see the module docstring. (Under Mosaic GPU interpret mode
    ``pl.program_id`` reads 0 in every CTA, so the compiled and Mosaic-GPU-interpreted
    kernels take ``lax.axis_index`` of the grid's name; Pallas' interpreter has
    ``pl.program_id`` only.)
    """
    interpret = interpret_mode(interpret)
    out_shape = list(out_shape)
    if interpret is True:
        return list(pl.pallas_call(functools.partial(body, index=program_id),
                                   out_shape=out_shape, grid=(grid,), interpret=True,
                                   name=name)(*operands))
    from jax.experimental.pallas import mosaic_gpu as plgpu

    # Warpgroup lowering semantics (jax 0.11+'s default; 0.10.2 defaults to Lane, whose
    # loop carries must keep one register layout, which a constant's splat layout breaks).
    params = plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup)
    kernel = plgpu.kernel(functools.partial(body, index=axis_index), out_type=out_shape,
                          grid=(grid,), grid_names=(_GRID,), kernel_name=name,
                          compiler_params=params, interpret=interpret or None)
    return list(kernel(*operands))


# -- what Mosaic GPU can lower ---------------------------------------------------------------
# Primitives `lowerable` removes from a kernel body (outside control flow): calls it inlines
# and ops it rewrites. (A float `rem` is among them; an integer one is left to Mosaic GPU.)
REWRITTEN = frozenset(("custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr", "pjit",
                       "jit", "closed_call", "core_call", "add_any", "pow", "rem",
                       "select_n", "stop_gradient"))


def lowerable(fn: Callable) -> Callable:
    """``fn`` evaluated so that Mosaic GPU can lower it, for use inside a kernel body.

    ``fn`` is traced to a jaxpr on each call and evaluated with calls inlined
    (``custom_jvp``, ``custom_vjp``: their primal computation, as the kernel is never
    differentiated; ``jit``), ``stop_gradient`` as the identity (any derivative in ``fn``
    is taken while tracing it, before), ``add_any`` as ``add``, ``pow`` as ``exp(y * log|x|)`` and a
    float ``rem`` as ``x - y * trunc(x / y)`` (see the module docstring). Inside control
    flow (``cond``, ``while``, ``scan``) nothing is rewritten.
    """
    @functools.wraps(fn)
    def wrapped(*args):
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        out = _eval(closed.jaxpr, closed.consts, jax.tree.leaves(args))
        return jax.tree.unflatten(jax.tree.structure(out_shape), out)

    return wrapped


def _inlined(eqn):
    """``(jaxpr, consts)`` of a call to inline, or None."""
    if eqn.primitive.name not in ("custom_jvp_call", "custom_vjp_call",
                                  "custom_vjp_call_jaxpr", "pjit", "jit", "closed_call",
                                  "core_call"):
        return None  # (a subset of REWRITTEN)
    for key in ("call_jaxpr", "fun_jaxpr", "jaxpr"):
        sub = eqn.params.get(key)
        if isinstance(sub, jcore.ClosedJaxpr):
            return sub.jaxpr, sub.consts
        if isinstance(sub, jcore.Jaxpr):
            return sub, ()
    return None


def _eval(jaxpr, consts, args):
    env: dict = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for v, a in zip(jaxpr.constvars, consts):
        env[v] = a
    for v, a in zip(jaxpr.invars, args, strict=True):
        env[v] = a
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        sub = _inlined(eqn)
        if sub is not None:
            outs = _eval(sub[0], sub[1], invals)
        elif eqn.primitive.name == "add_any":  # a VJP's cotangent sum: a plain add
            outs = [lax.add(*invals)]
        elif eqn.primitive.name == "stop_gradient":  # differentiated already: the identity
            outs = list(invals)
        elif eqn.primitive is lax.pow_p:
            outs = [_pow(*invals)]
        elif eqn.primitive is lax.select_n_p and jnp.ndim(invals[0]) < jnp.ndim(invals[1]):
            # A scalar predicate: Mosaic GPU selects between arrays of one shape only.
            which = jnp.broadcast_to(invals[0], jnp.shape(invals[1]))
            outs = [lax.select_n(which, *invals[1:])]
        elif eqn.primitive is lax.rem_p and jnp.issubdtype(invals[0].dtype, jnp.floating):
            outs = [_fmod(*invals)]
        else:
            outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
            if not eqn.primitive.multiple_results:
                outs = [outs]
        for v, o in zip(eqn.outvars, outs, strict=True):
            env[v] = o
    return [read(v) for v in jaxpr.outvars]


def _pow(x, y):
    """``lax.pow(x, y)`` for floating ``x`` from ops Mosaic GPU lowers: ``exp(y * log|x|)``,
    negated for x < 0 and odd integer y, NaN for finite x < 0 and non-integer y, 1 for
    y = 0, x = 1 and (x = -1, y = +-inf): IEEE pow's special values (but -0 to an odd
    negative power gives +inf)."""
    y = jnp.broadcast_to(jnp.asarray(y).astype(x.dtype), x.shape)  # lax.pow allows a 0-d y
    r = jnp.exp(y * jnp.log(jnp.abs(x)))
    whole = y == jnp.round(y)
    odd = whole & (jnp.round(y * 0.5) * 2 != y)  # y / 2 is exact; no float rem in Mosaic GPU
    fractional = jnp.where(x == -jnp.inf, r, jnp.nan)  # (-inf)**0.5 is inf, (-2)**0.5 NaN
    r = jnp.where(x < 0, jnp.where(whole, jnp.where(odd, -r, r), fractional), r)
    one = (y == 0) | (x == 1) | ((jnp.abs(x) == 1) & (jnp.abs(y) == jnp.inf))
    return jnp.where(one, jnp.ones_like(r), r)


def _fmod(x, y):
    """``lax.rem`` (C fmod) of floats from ops Mosaic GPU lowers: ``x - y * trunc(x / y)``.
    Equal to fmod while ``x / y`` is exact enough to truncate right (``|x / y| < 2**24``
    and not within an ulp of an integer); beyond, finite but not exact (spikefuse's
    formulas use fmod only to keep huge arguments finite: SquarewaveFourierSeries above
    ``|x| = 2**100``)."""
    q = x / y
    r = lax.round(q, lax.RoundingMethod.AWAY_FROM_ZERO)
    trunc = r - jnp.sign(q) * (jnp.abs(r) > jnp.abs(q)).astype(q.dtype)
    return x - y * trunc
