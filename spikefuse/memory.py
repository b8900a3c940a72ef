"""Training memory: spikes kept as bits, blocks recomputed, and what a backward keeps.

Between its forward and its backward pass, a spiking network keeps arrays of shape
``[T, batch, neurons]``: the matmul or convolution after a spiking layer keeps its input
spikes (4 bytes each in float32, although each is 0 or 1), and every neuron keeps what its
backward re-reads. This module removes both, in JAX's own idiom:

* `spike_matmul` / `spike_conv`: ``spikes @ w`` and ``lax.conv_general_dilated`` whose
  backward keeps the spike operand as **1 bit per spike** and rebuilds it exactly. The
  gradients are plain JAX's, bit for bit on CPU (the backward runs JAX's own transpose on
  the rebuilt operand).
* `checkpoint`: ``jax.checkpoint`` whose ``spike_argnums`` arguments are kept as bits; nothing
  computed inside the function is kept, its backward re-runs it (one extra forward).
* `scan`: ``lax.scan`` over chunks of time that keeps only its inputs (spikes as bits) and
  recomputes everything else one chunk at a time in the backward: what `checkpoint` keeps,
  with a working set of one chunk instead of the whole sequence (two extra forwards).
* `residual_bytes` / `residuals`: how many bytes ``jax.vjp`` of a function keeps, traced
  abstractly (nothing is computed), per argument and per layer.

**The 0/1 contract.** A spike argument must hold only 0 and 1 (in any float dtype); it is
kept as ``spikes != 0``. With checking off (the default) nothing looks at the values, and a
value other than 0 or 1 would be rebuilt as 1 in the backward: the gradients would be those
of the rebuilt operand. ``check=True`` on a call, or the environment variable
``SPIKEFUSE_CHECK_SPIKES=1`` (read when a call is traced), checks every spike argument and
raises a ``ValueError`` naming it: at once, before anything runs, when the argument is a
concrete array (an eager call); when the compiled program runs, from a host callback
(``jax.debug.callback``), when it is traced (under ``jit``, ``grad``, ``vmap``) — there jax
raises its runtime error (``jax.errors.JaxRuntimeError``), whose message holds the
``ValueError``'s. A checked value is never altered: no gradient is changed, silently or not.

**Bits.** An operand is packed with ``jnp.packbits`` along one axis — its last, or on
Explicit mesh axes the last axis that is not sharded — into uint8 words; that axis is padded
with zero bits to a multiple of 8 (a ``[T, batch, 100]`` array keeps 13 bytes per row). The
other axes, sharded or not, are untouched, so packing and unpacking run per shard. On Auto
mesh axes a sharded last axis is gathered to pack it: shard another axis.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["CHECK_ENV", "Residual", "checkpoint", "residual_bytes",
           "residual_bytes_per_layer", "residuals", "scan", "spike_conv", "spike_matmul"]

#: The environment variable that turns the 0/1 check on for every call whose ``check`` is
#: ``None`` ("1", "true" or "yes"; read when the call is traced).
CHECK_ENV = "SPIKEFUSE_CHECK_SPIKES"


# -- bits ---------------------------------------------------------------------------------
def _packed_axis(x) -> int:
    """The axis the bits are packed along: the last one, or on Explicit mesh axes the last
    one that is not sharded (packing splits it into words)."""
    try:
        spec = tuple(jax.typeof(x).sharding.spec)
    except Exception:  # no sharding in the type (Auto axes, older jax)
        spec = ()
    spec = spec + (None,) * (x.ndim - len(spec))
    free = [a for a in range(x.ndim) if spec[a] is None]
    return free[-1] if free else x.ndim - 1


@dataclasses.dataclass(frozen=True)
class _Packed:
    """How an operand was packed: its shape and dtype, and the packed axis."""

    shape: tuple[int, ...]
    dtype: Any
    axis: int


def _pack(x) -> tuple[jax.Array, _Packed]:
    """``x != 0`` as bits: uint8 words along one axis (`_packed_axis`), its tail padded."""
    meta = _Packed(tuple(x.shape), x.dtype, 0)
    if x.ndim == 0:
        x = x.reshape(1)
    axis = _packed_axis(x)
    return jnp.packbits(x != 0, axis=axis), dataclasses.replace(meta, axis=axis)


def _unpack(words, meta: _Packed) -> jax.Array:
    """The operand `_pack` packed, exactly (for 0/1 values), in its dtype."""
    n = meta.shape[meta.axis] if meta.shape else 1
    bits = jnp.unpackbits(words, axis=meta.axis, count=n)
    return bits.astype(meta.dtype).reshape(meta.shape)


def _kept_as_bits(fn: Callable, flat_args: Sequence, is_spike: Sequence[bool]):
    """``fn(*flat_args)``, differentiable, whose backward keeps the ``is_spike`` leaves as
    bits and every other leaf as it is (nothing computed by ``fn``): the backward rebuilds
    the spikes and differentiates ``fn`` again on them (``jax.vjp``). For a linear ``fn``
    (a matmul, a convolution) XLA removes the recomputed forward value, unused there.

    A ``jax.custom_vjp`` built per call: ``fn``, the mask and the packing are Python
    values the rules close over."""
    metas: list[_Packed | None] = [None] * len(flat_args)

    @jax.custom_vjp
    def run(*args):
        return fn(*args)

    def fwd(*args):
        kept = []
        for i, (a, spike) in enumerate(zip(args, is_spike)):
            if spike:
                words, metas[i] = _pack(a)
                kept.append(words)
            else:
                kept.append(a)
        return fn(*args), tuple(kept)

    def bwd(kept, ct):
        args = [_unpack(k, m) if m is not None else k for k, m in zip(kept, metas)]
        # As jax.checkpoint does: a barrier, so that XLA neither merges the recomputation
        # with the forward (common subexpressions: the forward's arrays would then live
        # until here) nor runs it before the cotangent exists (it would then hold its
        # arrays as long).
        args, ct = jax.lax.optimization_barrier((args, ct))
        _, pullback = jax.vjp(fn, *args)
        return tuple(pullback(ct))

    run.defvjp(fwd, bwd)
    return run(*flat_args)


# -- the 0/1 check ------------------------------------------------------------------------
def _checking(check: bool | None) -> bool:
    if check is None:
        return os.environ.get(CHECK_ENV, "").strip().lower() in ("1", "true", "yes")
    if not isinstance(check, (bool, np.bool_)):
        raise TypeError(f"check must be a bool or None, got {type(check).__name__}")
    return bool(check)


def _not_binary_error(name: str, values: np.ndarray) -> ValueError | None:
    bad = (values != 0) & (values != 1)
    if not bad.any():
        return None
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    return ValueError(
        f"{name} must hold only 0 and 1 (its bits are kept for the backward), but "
        f"{name}[{', '.join(map(str, index))}] = {values[index].item()!r} ({int(bad.sum())} such "
        f"value{'s' if bad.sum() != 1 else ''}); pass a spike train, or use the plain "
        "operation for this argument")


def _raise_if_not_binary(name: str, values) -> None:  # the host callback under a trace
    err = _not_binary_error(name, np.asarray(values))
    if err is not None:
        raise err


def _check_binary(name: str, x) -> None:
    """Checks that ``x`` holds only 0 and 1: now if it is concrete, else when the traced
    program runs. Raises a ``ValueError`` naming ``name``."""
    if isinstance(x, jax.core.Tracer):
        jax.debug.callback(functools.partial(_raise_if_not_binary, name), x)
        return
    err = _not_binary_error(name, np.asarray(x))
    if err is not None:
        raise err


def _spike_operand(x, name: str):
    """``x`` as a floating array, or a ``TypeError`` naming ``name``."""
    try:
        arr = jnp.asarray(x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an array of 0/1 spikes, got {type(x).__name__}: "
                        f"{err}") from None
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating array of 0/1 spikes (any float dtype), "
                        f"got dtype {arr.dtype}")
    return arr


# -- the operations -----------------------------------------------------------------------
def spike_matmul(spikes, w, *, check: bool | None = None) -> jax.Array:
    """``spikes @ w``, whose backward keeps ``spikes`` as 1 bit per spike.

    The forward is exactly ``jnp.matmul(spikes, w)``. Where plain JAX keeps the whole
    ``spikes`` array for the gradient of ``w``, this keeps ``spikes != 0`` packed into bits
    (see the module's "Bits") and rebuilds it in the backward; both gradients are then JAX's
    own, on the same values: equal to plain JAX's, bit for bit on CPU. Works under ``jit``,
    ``vmap``, ``grad`` and on sharded inputs (per shard). Reverse mode only (a
    ``jax.custom_vjp``): ``jax.jvp`` through it raises.

    Args:
      spikes: 0/1 values, any float dtype, any shape ``jnp.matmul`` accepts with ``w``.
        **Must hold only 0 and 1**: another value would be rebuilt as 1 for the backward;
        ``check`` finds it.
      w: the weights, as for ``jnp.matmul``.
      check: check that ``spikes`` holds only 0 and 1 and raise a ``ValueError`` naming it
        otherwise (module docstring: when); ``None`` reads ``SPIKEFUSE_CHECK_SPIKES``.

    Returns:
      ``jnp.matmul(spikes, w)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from spikefuse.memory import residual_bytes, spike_matmul
      >>> s = (jax.random.uniform(jax.random.key(0), (32, 256)) < 0.2).astype(jnp.float32)
      >>> w = jnp.ones((256, 10))
      >>> residual_bytes(lambda s, w: s @ w, s, w, exclude_inputs=(1,))  # s in f32
      32768.0
      >>> residual_bytes(spike_matmul, s, w, exclude_inputs=(1,))  # s as bits
      1024.0
    """
    spikes = _spike_operand(spikes, "spikes")
    if _checking(check):
        _check_binary("spikes", spikes)
    return _kept_as_bits(jnp.matmul, (spikes, jnp.asarray(w)), (True, False))


_CONV_KWARGS = ("lhs_dilation", "rhs_dilation", "dimension_numbers", "feature_group_count",
                "batch_group_count", "precision", "preferred_element_type")


def spike_conv(spikes, w, window_strides: Sequence[int], padding, *,
               check: bool | None = None, **kwargs) -> jax.Array:
    """``lax.conv_general_dilated(spikes, w, ...)``, whose backward keeps ``spikes`` as bits.

    The forward is exactly ``lax.conv_general_dilated(spikes, w, window_strides, padding,
    **kwargs)``; the backward keeps ``spikes != 0`` as 1 bit per spike (module docstring,
    "Bits") instead of the whole ``spikes`` array, rebuilds it and runs JAX's own transpose:
    gradients to ``w`` and ``spikes`` equal plain JAX's, bit for bit on CPU. Any strides,
    padding, dilations, dimension numbers and feature or batch groups; ``jit``, ``vmap``,
    ``grad``, sharded inputs (per shard). Reverse mode only (a ``jax.custom_vjp``).

    Args:
      spikes: the convolution's left-hand side, 0/1 values in any float dtype. **Must hold
        only 0 and 1**: another value would be rebuilt as 1 for the backward; ``check``
        finds it.
      w: the kernel (right-hand side).
      window_strides, padding: as for ``lax.conv_general_dilated``.
      check: check that ``spikes`` holds only 0 and 1 and raise a ``ValueError`` naming it
        otherwise (module docstring: when); ``None`` reads ``SPIKEFUSE_CHECK_SPIKES``.
      **kwargs: ``lhs_dilation``, ``rhs_dilation``, ``dimension_numbers``,
        ``feature_group_count``, ``batch_group_count``, ``precision``,
        ``preferred_element_type``, passed on.

    Returns:
      The convolution, as ``lax.conv_general_dilated`` returns it.

    Raises:
      TypeError: ``spikes`` not floating, or a keyword ``lax.conv_general_dilated`` does not
        take.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from spikefuse.memory import spike_conv
      >>> s = (jax.random.uniform(jax.random.key(0), (8, 16, 16, 3)) < 0.2).astype(jnp.float32)
      >>> w = jnp.ones((3, 3, 3, 4)) / 27
      >>> spike_conv(s, w, (1, 1), "SAME",
      ...            dimension_numbers=("NHWC", "HWIO", "NHWC")).shape
      (8, 16, 16, 4)
    """
    unknown = sorted(set(kwargs) - set(_CONV_KWARGS))
    if unknown:
        raise TypeError(f"spike_conv got unexpected keyword argument(s) {', '.join(unknown)} "
                        f"(lax.conv_general_dilated takes {', '.join(_CONV_KWARGS)})")
    spikes = _spike_operand(spikes, "spikes")
    if _checking(check):
        _check_binary("spikes", spikes)
    conv = functools.partial(jax.lax.conv_general_dilated, window_strides=window_strides,
                             padding=padding, **kwargs)
    return _kept_as_bits(conv, (spikes, jnp.asarray(w)), (True, False))


def _argnums(value, name: str) -> tuple[int, ...]:
    nums = (value,) if isinstance(value, (int, np.integer)) else value
    if isinstance(value, (str, bytes)) or not isinstance(nums, Sequence) or not all(
            isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in nums):
        raise TypeError(f"{name} must be an int or a sequence of ints, got {value!r}")
    return tuple(int(i) for i in nums)


def checkpoint(fn: Callable, *, spike_argnums: int | Sequence[int] = (),
               static_argnums: int | Sequence[int] = (), check: bool | None = None
               ) -> Callable:
    """``jax.checkpoint(fn)`` that keeps its ``spike_argnums`` arguments as bits.

    Like ``jax.checkpoint`` (``jax.remat``), the returned function computes ``fn`` and keeps
    nothing computed inside it for the backward, which re-runs ``fn`` (one extra forward)
    and differentiates it there. What it keeps is its arguments: the ones named in
    ``spike_argnums`` as 1 bit per value (module docstring, "Bits"), the others as they
    are (they usually exist anyway: parameters, a batch of data). Around a layer op and a
    spiking neuron (``Dense → LIF``, ``Conv → ALIF``, any neuron of the engine, fused or
    ``"reference"``), a network keeps per layer only its input spikes, 1/8 byte each.

    Gradients equal the plain ``fn``'s: the backward differentiates the same function on
    the same values. Closed-over arrays and tracers are allowed (and differentiated, as by
    ``jax.checkpoint``), so methods of brainstate and Flax NNX modules that only read their
    parameters work: ``checkpoint(self.block, spike_argnums=0)(spikes)``. Works under
    ``jit``, ``vmap``, ``grad`` (also of second order) and on sharded inputs. Reverse mode
    only (a ``jax.custom_vjp``): ``jax.jvp`` through it raises. ``fn`` must be pure: it must
    not write module state (it runs twice).

    Args:
      fn: the function, of positional array arguments (pytrees allowed) and keywords.
      spike_argnums: the positions of the spike arguments: pytrees of floating arrays
        that **must hold only 0 and 1** (another value would be rebuilt as 1 for the
        backward; ``check`` finds it).
      static_argnums: positions of arguments that are not arrays (hashable Python values),
        as for ``jax.checkpoint``.
      check: check every spike argument and raise a ``ValueError`` naming it when one holds
        a value other than 0 and 1 (module docstring: when); ``None`` reads
        ``SPIKEFUSE_CHECK_SPIKES``.

    Returns:
      A function with ``fn``'s signature and value.

    Raises:
      TypeError: a non-callable ``fn``, argnums that are not ints, a spike argument that is
        not floating.
      ValueError: an argnum out of range, or in both ``spike_argnums`` and
        ``static_argnums``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from spikefuse import memory
      >>> from spikefuse.neurons import LIF
      >>> lif = LIF(tau=2.0)
      >>> def block(w, spikes):                       # [T, batch, n_in] -> [T, batch, n_out]
      ...     return lif(spikes @ w)[0]
      >>> w = jnp.full((128, 64), 0.1)
      >>> s = (jax.random.uniform(jax.random.key(0), (16, 8, 128)) < 0.2).astype(jnp.float32)
      >>> kept = memory.residual_bytes(block, w, s, exclude_inputs=(0,))  # all but w
      >>> round(kept / s.size, 2)  # bytes per input spike: s (4) and LIF's residuals (4)
      8.0
      >>> kept = memory.residual_bytes(memory.checkpoint(block, spike_argnums=1), w, s,
      ...                              exclude_inputs=(0,))
      >>> kept / s.size  # s as bits, nothing else
      0.125
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    spikes_at = _argnums(spike_argnums, "spike_argnums")
    static_at = _argnums(static_argnums, "static_argnums")
    both = sorted(set(spikes_at) & set(static_at))
    if both:
        raise ValueError(f"argument(s) {both} are in both spike_argnums and static_argnums")
    _checking(check)  # a bad check is refused now; the environment is read at each call

    @functools.wraps(fn)
    def checkpointed(*args, **kwargs):
        checking = _checking(check)
        n = len(args)
        for name, nums in (("spike_argnums", spikes_at), ("static_argnums", static_at)):
            bad = [i for i in nums if not -n <= i < n]
            if bad:
                raise ValueError(f"{name} {bad} out of range for {n} positional "
                                 f"argument{'s' if n != 1 else ''}")
        spike_pos = {i % n for i in spikes_at}
        static_pos = {i % n for i in static_at}
        dyn_pos = [i for i in range(n) if i not in static_pos]
        dyn = []
        for i in dyn_pos:
            if i in spike_pos:
                name = f"argument {i} of {getattr(fn, '__name__', 'fn')} (spike_argnums)"
                leaves, tree = jax.tree.flatten(args[i])
                leaves = [_spike_operand(x, name) for x in leaves]
                if checking:
                    for x in leaves:
                        _check_binary(name, x)
                dyn.append(jax.tree.unflatten(tree, leaves))
            else:
                dyn.append(args[i])

        def dynamic_fn(*dyn_args):
            full = list(args)
            for i, a in zip(dyn_pos, dyn_args):
                full[i] = a
            return fn(*full, **kwargs)

        # Tracers fn closes over (module parameters, a surrogate's traced alpha) become
        # explicit inputs: a custom_vjp differentiates its inputs only.
        converted, consts = jax.closure_convert(dynamic_fn, *dyn)
        flat, tree = jax.tree.flatten((tuple(dyn), tuple(consts)))
        is_spike = [flag for i, a in zip(dyn_pos, dyn)
                    for flag in [i in spike_pos] * len(jax.tree.leaves(a))]
        is_spike += [False] * len(jax.tree.leaves(tuple(consts)))

        def flat_fn(*leaves):
            d, c = jax.tree.unflatten(tree, leaves)
            return converted(*d, *c)

        return _kept_as_bits(flat_fn, flat, is_spike)

    return checkpointed


def _floating(x, name: str) -> jax.Array:
    """``x`` as a floating array of a strong dtype (itself when it is one already), or a
    ``TypeError`` naming ``name``."""
    try:
        arr = x if isinstance(x, jax.Array) else jnp.asarray(x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a floating array, got {type(x).__name__}: {err}"
                        ) from None
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(f"{name} must be floating (it is differentiated), got dtype "
                        f"{arr.dtype}")
    if getattr(jax.typeof(arr), "weak_type", False):  # a Python float: made float32 proper
        arr = arr.astype(arr.dtype)
    return arr


def _weak(x) -> bool:
    """Whether ``x`` is weakly typed: a Python scalar, or an array made from one."""
    if isinstance(x, (bool, np.bool_, jax.ShapeDtypeStruct)):
        return False
    if isinstance(x, (int, float, complex)):
        return True
    return isinstance(x, jax.Array) and bool(getattr(jax.typeof(x), "weak_type", False))


def _promote_weak(f, tree, leaves, zero_at, x_chunk) -> list:
    """``leaves`` of ``init``, each weakly typed one (a Python float) cast to the dtype of the
    carry ``f`` returns for it, as ``lax.scan`` does: ``init=0.0`` for a float32 carry is
    then float32 with x64 on too. ``f`` is traced once more only when there is one."""
    weak = [not zero and _weak(c) for c, zero in zip(leaves, zero_at)]
    if not any(weak):
        return list(leaves)
    probe = [c if zero else jnp.asarray(c) for c, zero in zip(leaves, zero_at)]
    try:
        out = jax.eval_shape(f, jax.tree.unflatten(tree, probe), x_chunk)[0]
    except Exception:  # left to the checked call of f, which names what is wrong
        return list(leaves)
    out_leaves, out_tree = jax.tree.flatten(out)
    if out_tree != tree:
        return list(leaves)
    return [jnp.asarray(c, o.dtype) if w and jnp.issubdtype(o.dtype, jnp.floating) else c
            for c, w, o in zip(leaves, weak, out_leaves)]


def _zero_after(anchor) -> jax.Array:
    """A scalar 0 computed from ``anchor`` (a sum over its first row, not one element:
    taking an element of a sharded array would gather it)."""
    if not anchor.size:
        return jnp.zeros((), anchor.dtype)
    return jnp.sum(jax.lax.slice_in_dim(anchor, 0, 1) * 0)


def _explicit_spec(x) -> tuple | None:
    """The mesh axes per axis of ``x``'s type on Explicit mesh axes, else None."""
    try:
        sharding = x.sharding if isinstance(x, jax.ShapeDtypeStruct) else jax.typeof(x).sharding
        spec = tuple(sharding.spec)
    except Exception:  # no sharding in the type (Auto axes, no mesh)
        return None
    return spec + (None,) * (len(x.shape) - len(spec)) if any(spec) else None


def _buffer(zero, shape, dtype, spec) -> jax.Array:
    """An array of ``shape`` that the caller fills before reading it, broadcast from
    ``zero`` (`_zero_after`): XLA cannot then allocate it before ``zero``'s anchor exists. (A
    constant has no operand: XLA:CPU merges equal ones and schedules them at the program's
    start, holding the buffer until the loop that fills it — maybe the end of the
    backward.) ``spec``: its sharding on Explicit mesh axes (None: none)."""
    return jax.lax.broadcast_in_dim(
        zero.astype(dtype), shape, (),
        out_sharding=None if spec is None else jax.sharding.PartitionSpec(*spec))


def scan(f: Callable, init, xs, *, chunks: int, spikes: bool | Any = True,
         check: bool | None = None, carries: str = "sweep"):
    """``jax.lax.scan`` over ``chunks`` chunks of time, whose backward keeps only its inputs
    and recomputes everything else, one chunk at a time.

    ``f(carry, x_chunk) -> (carry, y_chunk)`` runs over one chunk of ``L = T / chunks``
    steps: ``x_chunk`` is ``xs[i*L:(i+1)*L]`` (every leaf sliced along its first axis, time) and
    ``y_chunk`` has ``L`` steps along its first axis; the result is the final carry and the
    ``y_chunk`` of all the chunks, in order, ``[T, ...]``. The forward runs ``f`` once per
    chunk, like ``lax.scan`` over chunks. A network written as ``f`` (a layer, or all of
    them, each neuron carrying its state from chunk to chunk) is then trained with a
    backward that keeps ``init``, the arrays ``f`` closes over, and ``xs`` — as 1 bit per
    value where they are spikes (``spikes``), as they are otherwise — and **nothing
    computed**: not the per-step residuals of ``lax.scan``, not the carries at the chunk
    starts that ``lax.scan(jax.checkpoint(f))`` keeps. The backward recomputes those
    carries (one sweep forward through the chunks), then goes back through the chunks,
    recomputing and differentiating one at a time: its working set is one chunk's, plus
    the carries at the chunk starts and the cotangent of ``xs``.

    The price is two extra forwards (``jax.checkpoint`` pays one): more chunks save more
    memory and cost no more recomputation, but each ``f`` call then sees fewer steps at
    once. (``carries="recompute"`` holds no carries in the backward; the carries then cost
    ``(chunks - 1) / 2`` forwards instead of ``(chunks - 1) / chunks``.) ``chunks=1`` is
    `checkpoint` with ``xs`` as bits. Gradients equal those of ``lax.scan`` over the same
    chunks up to float rounding — the backward differentiates the same ``f`` on the same
    values, but may sum over the chunks in another order. Works under
    ``jit``, ``vmap``, ``grad`` (also of second order); reverse mode only (a
    ``jax.custom_vjp``). ``f`` must be pure (it runs three times).

    Args:
      f: ``f(carry, x_chunk) -> (carry, y_chunk)``, pytrees of floating arrays; the carry
        out must match the carry in (structure, shapes, dtypes), as for ``lax.scan``.
        Arrays it closes over (parameters, traced ones too) are differentiated.
      init: the first carry, a pytree of floating arrays; a ``jax.ShapeDtypeStruct`` leaf
        stands for zeros of its shape, dtype (and sharding, if it has one), built inside (a
        neuron's usual start), which the backward then need not keep. A Python float leaf
        takes the dtype of the carry ``f`` returns for it, as in ``lax.scan``.
      xs: a pytree of floating arrays with the same first axis ``T`` (time).
      chunks: how many chunks ``T`` is cut into; must divide ``T``.
      spikes: which leaves of ``xs`` are spikes, kept as bits (packed along their last
        axis, or the last one not sharded, as in the module docstring's "Bits"): ``True``
        (all, the default), ``False`` (none: data, kept as it is), or a pytree of bools
        with the structure of ``xs``. A spike leaf needs a feature axis after time and
        **must hold only 0 and 1** (another value would be rebuilt as 1 for the
        backward; ``check`` finds it).
      check: check every spike leaf and raise a ``ValueError`` naming it when one holds a
        value other than 0 and 1 (module docstring: when); ``None`` reads
        ``SPIKEFUSE_CHECK_SPIKES``.
      carries: how the backward gets the carry at each chunk's start. ``"sweep"`` (the
        default): one sweep forward through the chunks, the ``chunks - 1`` carries held
        until their chunk is differentiated. ``"recompute"``: none held — each chunk's
        start is recomputed from ``init`` when its turn comes, ``chunks * (chunks - 1) / 2``
        chunk forwards instead of ``chunks - 1``. Less memory (the carries can be as large
        as what a chunk works on: a network's membranes, with one-step chunks), more time.

    Returns:
      ``(carry, ys)``: the last carry, and the ``y_chunk`` of every chunk joined along time.

    Raises:
      TypeError: ``f`` not callable, ``chunks`` not an int, a leaf of ``init`` or ``xs``
        not floating, ``spikes`` neither a bool nor a pytree of bools like ``xs``, or a
        carry ``f`` returns unlike the one it was given.
      ValueError: ``xs`` empty or its leaves of different lengths, ``chunks`` below 1 or
        not dividing ``T``, ``carries`` neither ``"sweep"`` nor ``"recompute"``, a spike
        leaf without a feature axis (or, on Explicit mesh axes, with every axis but time
        sharded), or a ``y_chunk`` not ``T / chunks`` steps long.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from spikefuse import memory
      >>> from spikefuse.neurons import LIF
      >>> lif = LIF(tau=2.0)
      >>> w = jnp.full((128, 64), 0.1)
      >>> s = (jax.random.uniform(jax.random.key(0), (16, 8, 128)) < 0.2).astype(jnp.float32)
      >>> def layer(v, s_chunk):                  # 4 steps of Dense -> LIF, from v
      ...     spikes, v = lif(s_chunk @ w, v)
      ...     return v, spikes
      >>> v0 = jax.ShapeDtypeStruct((8, 64), jnp.float32)  # zeros, not kept
      >>> _, out = memory.scan(layer, v0, s, chunks=4)
      >>> out.shape
      (16, 8, 64)
      >>> kept = memory.residual_bytes(lambda s: memory.scan(layer, v0, s, chunks=4), s)
      >>> kept / s.size  # bytes per input spike: s as bits, nothing computed
      0.125
    """
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    if isinstance(chunks, (bool, np.bool_)) or not isinstance(chunks, (int, np.integer)):
        raise TypeError(f"chunks must be an int, got {chunks!r}")
    chunks = int(chunks)
    if chunks < 1:
        raise ValueError(f"chunks must be at least 1, got {chunks}")
    if carries not in ("sweep", "recompute"):
        raise ValueError(f"carries must be 'sweep' or 'recompute', got {carries!r}")
    checking = _checking(check)
    x_leaves, x_tree = jax.tree.flatten(xs)
    if not x_leaves:
        raise ValueError("xs must hold at least one array (its first axis is time)")
    if isinstance(spikes, (bool, np.bool_)):
        is_spike = [bool(spikes)] * len(x_leaves)
    else:
        flags, flag_tree = jax.tree.flatten(spikes)
        same = flag_tree == x_tree  # type: ignore[operator]  # PyTreeDef has __eq__
        if not same or not all(isinstance(b, (bool, np.bool_)) for b in flags):
            raise TypeError(f"spikes must be a bool or a pytree of bools with the structure "
                            f"of xs ({x_tree}), got {spikes!r}")
        is_spike = [bool(b) for b in flags]
    leaves = []
    for k, (x, spike) in enumerate(zip(x_leaves, is_spike)):
        name = f"xs leaf {k}" + (" (spikes)" if spike else "")
        x = _spike_operand(x, name) if spike else _floating(x, name)
        if x.ndim < (2 if spike else 1):
            raise ValueError(f"{name} has shape {x.shape}: it needs a time axis"
                             + (" and a feature axis to pack its bits along (or spikes=False "
                                "for it)" if spike else ""))
        if spike and checking:
            _check_binary(name, x)
        leaves.append(x)
    T = leaves[0].shape[0]
    if any(x.shape[0] != T for x in leaves):
        raise ValueError(f"every leaf of xs needs the same first axis (time); got lengths "
                         f"{[x.shape[0] for x in leaves]}")
    if T % chunks:
        raise ValueError(f"chunks ({chunks}) must divide the length of xs ({T})")
    steps = T // chunks
    init_leaves, init_tree = jax.tree.flatten(init)
    zero_at = [isinstance(c, jax.ShapeDtypeStruct) for c in init_leaves]
    for c, zero in zip(init_leaves, zero_at):
        if zero and not jnp.issubdtype(c.dtype, jnp.floating):
            raise TypeError(f"init must be floating (it is differentiated), got a "
                            f"ShapeDtypeStruct of dtype {c.dtype}")
    first = jax.tree.unflatten(x_tree, [x[:steps] for x in leaves])
    init_leaves = _promote_weak(f, init_tree, init_leaves, zero_at, first)
    given = tuple(_floating(c, "init") for c, zero in zip(init_leaves, zero_at) if not zero)

    def first_carry(given):
        """``init``, its ShapeDtypeStruct leaves as zeros: built here, never kept."""
        rest = iter(given)
        return jax.tree.unflatten(init_tree, [
            jnp.zeros(c.shape, c.dtype, out_sharding=c.sharding) if zero else next(rest)
            for c, zero in zip(init_leaves, zero_at)])

    init = first_carry(given)

    def chunk_fn(carry, x_chunk):
        new, y = f(carry, x_chunk)
        same = jax.tree.structure(new) == jax.tree.structure(carry)  # type: ignore[operator]
        if not same or any(
                (a.shape, a.dtype) != (b.shape, b.dtype)
                for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(carry))):
            raise TypeError(
                "f must return a carry like the one it is given (structure, shapes, dtypes): "
                f"got {jax.tree.map(jax.typeof, new)} for {jax.tree.map(jax.typeof, carry)}")
        bad = [jnp.shape(a) for a in jax.tree.leaves(y) if jnp.ndim(a) < 1
               or jnp.shape(a)[0] != steps]
        if bad:
            raise ValueError(f"every leaf of f's y_chunk needs {steps} steps (T / chunks) "
                             f"along its first axis; got shapes {bad}")
        return new, y

    converted, closed = jax.closure_convert(chunk_fn, init, first)
    consts = tuple(closed)
    y_shapes = jax.eval_shape(converted, init, first, *consts)[1]
    metas: list[_Packed | None] = [None] * len(leaves)

    def chunk_of(kept, i, packed):
        """Chunk ``i`` of the xs leaves: from ``kept``, bits where ``packed`` has a meta."""
        out = []
        for x, meta in zip(kept, packed):
            piece = jax.lax.dynamic_slice_in_dim(x, i * steps, steps)
            if meta is not None:
                piece = _unpack(piece, dataclasses.replace(meta, shape=(steps, *meta.shape[1:])))
            out.append(piece)
        return jax.tree.unflatten(x_tree, out)

    def step(carry, x_chunk, k):
        return converted(carry, x_chunk, *k)

    plain: list[_Packed | None] = [None] * len(leaves)

    def time_major(spec):  # a [T, ...] buffer sharded as a chunk of it (time: not sharded)
        return None if spec is None else (None, *spec[1:])

    x_specs = [time_major(_explicit_spec(x)) for x in leaves]
    y_specs = jax.tree.map(lambda y: time_major(_explicit_spec(y)), y_shapes)
    carry_specs = [None if sp is None else (None, *sp)
                   for sp in map(_explicit_spec, jax.tree.leaves(init))]

    def forward(carry, xs_leaves, k):
        zero = _zero_after(xs_leaves[0])
        ys = jax.tree.map(lambda a, sp: _buffer(zero, (T, *a.shape[1:]), a.dtype, sp),
                          y_shapes, y_specs, is_leaf=lambda a: a is None)

        def body(i, state):
            carry, ys = state
            carry, y = step(carry, chunk_of(xs_leaves, i, plain), k)
            ys = jax.tree.map(lambda buf, v: jax.lax.dynamic_update_slice_in_dim(
                buf, v, i * steps, 0), ys, y)
            return carry, ys

        return jax.lax.fori_loop(0, chunks, body, (carry, ys))

    @jax.custom_vjp
    def run(given, xs_leaves, k):
        return forward(first_carry(given), xs_leaves, k)

    def run_fwd(given, xs_leaves, k):
        kept = []
        for j, (x, spike) in enumerate(zip(xs_leaves, is_spike)):
            if spike:
                words, meta = _pack(x)
                metas[j] = meta
                if meta.axis == 0:
                    raise ValueError(f"xs leaf {j} (spikes): every axis but time is sharded, "
                                     "and its bits are packed along an axis other than time; "
                                     "leave one feature axis unsharded, or spikes=False")
                kept.append(words)
            else:
                kept.append(x)
        return forward(first_carry(given), xs_leaves, k), (given, tuple(kept), k)

    def run_bwd(res, ct):
        given, kept, k = res
        carry0 = first_carry(given)
        ct_carry, ct_ys = ct
        # As in `checkpoint`: nothing recomputed before the cotangent exists.
        kept, ct_carry, ct_ys = jax.lax.optimization_barrier((kept, ct_carry, ct_ys))
        kept = list(kept)
        zero = _zero_after((jax.tree.leaves(ct_ys) + jax.tree.leaves(ct_carry))[0])

        def advance(kept, i, carry):  # the carry at the end of chunk i
            return step(carry, chunk_of(kept, i, metas), k)[0]

        def remember(i, state):
            carry, starts = state
            carry = advance(kept, i, carry)
            return carry, jax.tree.map(lambda buf, c: buf.at[i].set(c), starts, carry)

        sweep = carries == "sweep" and chunks > 1
        if sweep:  # Sweep 1: the carry at the start of chunks 1 .. chunks-1, held
            starts = jax.tree.unflatten(jax.tree.structure(carry0), [
                _buffer(zero, (chunks - 1, *c.shape), c.dtype, sp)
                for c, sp in zip(jax.tree.leaves(carry0), carry_specs)])
            _, starts = jax.lax.fori_loop(0, chunks - 1, remember, (carry0, starts))
        # Sweep 2: back through the chunks, each recomputed and differentiated.
        dxs = [_buffer(zero, m.shape if m else x.shape, m.dtype if m else x.dtype, sp)
               for x, m, sp in zip(kept, metas, x_specs)]

        def back(j, state):
            d_carry, d_k, dxs = state
            i = chunks - 1 - j
            if sweep:
                carry = jax.tree.map(lambda c0, buf: jnp.where(
                    i == 0, c0, buf[jnp.maximum(i - 1, 0)]), carry0, starts)
            elif chunks == 1:
                carry = carry0
            else:  # "recompute": from init, once the cotangent of chunk i+1 exists
                c0, kept_now, d_carry = jax.lax.optimization_barrier((carry0, kept, d_carry))
                # A loop of fixed length, chunks i.. skipped (cond runs one branch): a loop
                # of length i would not be reverse-differentiable (second order).
                carry = jax.lax.fori_loop(0, chunks - 1, lambda m, c: jax.lax.cond(
                    m < i, functools.partial(advance, kept_now, m), lambda c: c, c), c0)
            _, pullback = jax.vjp(step, carry, chunk_of(kept, i, metas), k)
            ct_y = jax.tree.map(lambda c: jax.lax.dynamic_slice_in_dim(c, i * steps, steps),
                                ct_ys)
            d_carry, d_x, dk = pullback((d_carry, ct_y))
            dxs = [jax.lax.dynamic_update_slice_in_dim(buf, d, i * steps, 0)
                   for buf, d in zip(dxs, jax.tree.leaves(d_x))]
            return d_carry, jax.tree.map(jnp.add, d_k, dk), dxs

        d_k0 = jax.tree.map(jnp.zeros_like, k)
        d_carry, d_k, dxs = jax.lax.fori_loop(0, chunks, back, (ct_carry, d_k0, dxs))
        d_given = tuple(d for d, zero in zip(jax.tree.leaves(d_carry), zero_at) if not zero)
        return d_given, tuple(dxs), d_k

    run.defvjp(run_fwd, run_bwd)
    return run(given, tuple(leaves), consts)


# -- what a backward keeps ----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Residual:
    """One array a pullback holds: its shape, dtype, size in bytes, and which argument of
    the differentiated function it is (``argnum``; ``None`` for a new array)."""

    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    argnum: int | None = None

    @property
    def is_input(self) -> bool:
        """Whether it is one of the function's inputs, kept as is (not a new array)."""
        return self.argnum is not None


def residuals(fn: Callable, *args) -> list[Residual]:
    """The arrays ``jax.vjp(fn, *args)`` keeps for the backward.

    Traced abstractly (``jax.eval_shape``): nothing is computed or allocated, so it works at
    any size on any machine, for any backend that traces there (``"pallas"`` included, on
    a CPU).

    Args:
      fn: the function to differentiate (pytrees of arrays in and out).
      *args: its arguments: arrays, or ``jax.ShapeDtypeStruct`` (nothing is computed).

    Returns:
      One ``Residual`` per distinct array the pullback holds. Constants the function closes
      over count too (they are held); an input converted or reshaped is a new array.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> x = jax.ShapeDtypeStruct((1000,), jnp.float32)
      >>> residuals(jax.checkpoint(jnp.sin), x)  # keeps x, argument 0
      [Residual(shape=(1000,), dtype='float32', nbytes=4000, argnum=0)]
    """
    owners: list[int | None] = []

    def probe(*args):
        _, pullback = jax.vjp(fn, *args)
        inputs = [(i, leaf) for i, a in enumerate(args) for leaf in jax.tree.leaves(a)]
        held = jax.tree.leaves(pullback)  # jax lists an array held twice once
        owners.extend(next((i for i, a in inputs if leaf is a), None) for leaf in held)
        return held

    shapes = jax.eval_shape(probe, *args)
    return [Residual(tuple(s.shape), np.dtype(s.dtype).name,
                     int(np.prod(s.shape, dtype=np.int64)) * np.dtype(s.dtype).itemsize, o)
            for s, o in zip(shapes, owners)]


def residual_bytes(fn: Callable, *args, exclude_inputs: bool | int | Sequence[int] = False,
                   per: float = 1) -> float:
    """Bytes ``jax.vjp(fn, *args)`` keeps for the backward, divided by ``per``.

    The user's question "how many bytes does my model keep, and which layer keeps them":
    ask it of the whole loss, then of each layer on its input (``jax.eval_shape`` gives the
    input's shape without computing it), counting the layer's input spikes but not its
    parameters — ``exclude_inputs=(0,)`` for ``layer(params, spikes)``. Traced abstractly,
    as `residuals`.

    Args:
      fn: the function, as in `residuals`.
      *args: its arguments, as in `residuals`.
      exclude_inputs: ``True``: leave out every input kept as it is (it exists anyway; what
        remains is what differentiating adds); an int or ints: leave out those arguments
        only; ``False``: count everything.
      per: a divisor, e.g. the number of neuron-steps (T x neurons) for bytes per
        neuron-step.

    Returns:
      ``sum(nbytes) / per`` over the residuals counted.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from spikefuse.neurons import LIF
      >>> x = jax.ShapeDtypeStruct((64, 32, 100), jnp.float32)  # [T, batch, neurons]
      >>> neuron_steps = 64 * 32 * 100
      >>> kept = residual_bytes(LIF(backend="reference"), x, exclude_inputs=True,
      ...                       per=neuron_steps)
      >>> round(kept, 2)  # two float32 arrays per step
      8.0
    """
    if isinstance(exclude_inputs, (bool, np.bool_)):
        excluded = set(range(len(args))) if exclude_inputs else set()
    else:
        excluded = {i % max(len(args), 1) for i in _argnums(exclude_inputs, "exclude_inputs")}
    total = sum(r.nbytes for r in residuals(fn, *args) if r.argnum not in excluded)
    return total / per


def residual_bytes_per_layer(layers: Sequence[Callable], params: Sequence, x, *,
                             per: float = 1) -> list[float]:
    """Bytes each layer of a chain keeps for the backward, divided by ``per``.

    For a network written as a chain ``h = layers[i](params[i], h)`` from ``h = x``: the
    `residual_bytes` of each layer on its input, counting what it keeps of that input (the
    spikes a matmul keeps are the previous layer's output, not an input of the network) but
    not its parameters, nor ``x`` itself (an input of the network, held anyway). The
    inputs are traced abstractly (``jax.eval_shape``): nothing is computed. The sum is what
    the whole chain keeps, give or take an array two layers keep (counted twice here).

    Args:
      layers: the functions ``f(params_i, h) -> h``.
      params: one pytree of parameters per layer (``{}`` or ``None`` for none).
      x: the chain's input: an array or a ``jax.ShapeDtypeStruct``.
      per: a divisor (say the neuron-steps of the whole network).

    Returns:
      One figure per layer.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from spikefuse import memory
      >>> from spikefuse.neurons import LIF
      >>> lif = LIF(backend="reference")
      >>> dense = lambda w, s: lif(s @ w)[0]
      >>> ws = [jnp.zeros((100, 64)), jnp.zeros((64, 64))]
      >>> x = jax.ShapeDtypeStruct((16, 32, 100), jnp.float32)     # [T, batch, inputs]
      >>> per = 16 * 32 * 64                                        # neuron-steps per layer
      >>> print(*(f"{b:.3f}" for b in memory.residual_bytes_per_layer(
      ...     [dense, dense], ws, x, per=per)))  # LIF: 8; layer 2 also keeps its input: 4
      8.000 12.000
      >>> bits = memory.checkpoint(dense, spike_argnums=1)
      >>> print(*(f"{b:.3f}" for b in memory.residual_bytes_per_layer(
      ...     [dense, bits], ws, x, per=per)))  # layer 2: its input as bits only
      8.000 0.125
    """
    if len(layers) != len(params):
        raise ValueError(f"layers and params differ in length: {len(layers)} and {len(params)}")
    out, h = [], x
    for i, (f, p) in enumerate(zip(layers, params)):
        out.append(residual_bytes(f, p, h, exclude_inputs=(0, 1) if i == 0 else (0,),
                                  per=per))
        h = jax.eval_shape(f, p, h)
    return out
