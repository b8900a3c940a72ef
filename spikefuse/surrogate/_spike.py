"""The spike op: Heaviside forward, surrogate derivative, backend dispatch.

Two JAX primitives carry every spike:

* ``spike_p(x, thr, *params)`` = H(x − thr), in ``x``'s dtype.
* ``spike_grad_p(x, thr, t, *params)`` = t · g′(x − thr), linear in ``t``.

The JVP of ``spike_p`` is ``spike_grad_p(x, thr, tx − tthr)``, so dH/dx = g′, dH/dthr = −g′
and dH/dparams = 0 exactly (braintools 0.4.0 semantics). ``spike_grad_p`` transposes into
itself (t·g′ is symmetric in its cotangent), so reverse mode runs the same one-pass
computation ct · g′(x − thr); its own JVP — needed only for second order — differentiates
the reference formula, so d²H/dx² = dg′/dx and ∂(dH/dx)/∂α = ∂g′/∂α.

Each primitive lowers to the backend chosen at bind time (``kernels.dispatch``): the jnp
reference, or Pallas kernels — for ``"pallas"`` those of the platform it is lowered for
(for a GPU ``kernels.elementwise``, Triton, or ``kernels.mgpu_elementwise``, Mosaic GPU, as
``dispatch.gpu_family`` decides; ``kernels.tpu_elementwise``, Mosaic, for a TPU: one
lowering rule per platform), for ``"pallas_triton"`` / ``"pallas_mgpu"`` that GPU family,
for ``"interpret"`` / ``"interpret_mgpu"`` / ``"interpret_tpu"`` the Triton / Mosaic GPU /
TPU kernels interpreted. g′ is the shape's own ``surrogate_grad``, passed as a static
function of ``(x, *params)``; the parameters are operands, so a new value never recompiles.

Sharded inputs (``kernels.sharding``): the kernels run per shard. On Explicit mesh axes the
bind is wrapped in a ``shard_map`` (which jax differentiates and batches like any other);
on Auto axes a twin pair of primitives (``spike_partitioned_p``, ``spike_grad_partitioned_p``,
the same rules) lowers each kernel through ``custom_partitioning``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax._src.dispatch import prim_requires_devices_during_lowering as _dispatch_registry
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from spikefuse._checks import check_broadcast, real_array
from spikefuse.kernels import dispatch, sharding
from spikefuse.kernels._compat import silence_triton_deprecation
from spikefuse.kernels.dispatch import BackendUnavailableError
from spikefuse.surrogate._base import Surrogate, grad_fn

__all__ = ["spike", "fire", "BackendUnavailableError"]


def compute_dtype(dtype):
    """bf16/f16 are computed in f32 (and stored back); f32 and f64 in themselves."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float32) if dtype.itemsize < 4 else dtype


# -- implementations ---------------------------------------------------------------------
def _reference_spike(x, thr):
    cdt = compute_dtype(x.dtype)
    return (x.astype(cdt) - thr.astype(cdt) >= 0).astype(x.dtype)


def _reference_spike_grad(x, thr, t, *params, grad_fn):
    cdt = compute_dtype(x.dtype)
    g = grad_fn(x.astype(cdt) - thr.astype(cdt), *params)
    return (t.astype(cdt) * g).astype(t.dtype)


def _kernels(backend, platform):
    """The elementwise kernel module a kernel backend runs when lowered for ``platform``
    (Triton or Mosaic GPU on a GPU, Mosaic on a TPU; see ``dispatch.kernel_target``), and
    interpret or not."""
    from spikefuse.kernels import elementwise, mgpu_elementwise, tpu_elementwise

    family, interpret = dispatch.kernel_target(backend, platform, "elementwise")
    modules = {"triton": elementwise, "mgpu": mgpu_elementwise, "tpu": tpu_elementwise}
    return modules[family], interpret


def _spike_impl(x, thr, *params, grad_fn, backend, partition, platform):
    del params, grad_fn  # the forward does not depend on the surrogate
    if backend == "reference":
        return _reference_spike(x, thr)
    module, interpret = _kernels(backend, platform)

    def kernel(x, thr):
        return (module.heaviside(x, thr, interpret=interpret),)

    return _launch(kernel, (x, thr), partition)


def _spike_grad_impl(x, thr, t, *params, grad_fn, backend, partition, platform):
    if backend == "reference":
        return _reference_spike_grad(x, thr, t, *params, grad_fn=grad_fn)
    module, interpret = _kernels(backend, platform)

    def kernel(x, thr, t, *params):
        return (module.grad_mul(x, thr, t, params, grad_fn, interpret=interpret),)

    return _launch(kernel, (x, thr, t, *params), partition)


def _launch(kernel, args, partition):
    if partition:  # per shard: thr, t and the parameters line up with x from the right
        kernel = sharding.partitioned(kernel, leads=(0,) * len(args), out_leads=(0,))
    return kernel(*args)[0]


class _Ops(NamedTuple):
    spike: Primitive  # (x, thr, *params) -> H(x - thr)
    grad: Primitive   # (x, thr, t, *params) -> t * g'(x - thr)


def _bind(prim, *args, **params):
    # Inside a shard_map the operands must agree on the manual axes they vary over.
    return prim.bind(*sharding.match_varying(*args), **params)


def _define(suffix: str, partition: bool) -> _Ops:
    """The two primitives and their rules; ``partition``: the kernels run per shard."""
    ops = _Ops(Primitive("spikefuse_spike" + suffix), Primitive("spikefuse_spike_grad" + suffix))

    @functools.lru_cache(maxsize=512)
    def jitted(prim, grad_fn, backend):
        return jax.jit(functools.partial(prim.bind, grad_fn=grad_fn, backend=backend))

    for prim, impl in ((ops.spike, _spike_impl), (ops.grad, _spike_grad_impl)):
        # Eager calls go through jit, so they take the same lowering (and the same clear
        # error for a backend that cannot run here) as traced ones.
        prim.def_impl(lambda *args, grad_fn, backend, _p=prim: jitted(_p, grad_fn, backend)(*args))
        # One rule per platform: "pallas" lowers to the Triton kernels for a GPU and to the
        # Mosaic kernels for a TPU (the default rule covers every other platform).
        for platform in dispatch.LOWERING_PLATFORMS:
            lowering = mlir.lower_fun(functools.partial(
                impl, partition=partition, platform=platform or "cpu"), multiple_results=False)
            mlir.register_lowering(prim, silence_triton_deprecation()(lowering),
                                   platform=platform)
    # x's shape, sharding and varying axes (operands agree on those, see _bind).
    ops.spike.def_abstract_eval(lambda x, thr, *params, **_: x.update(weak_type=False))
    ops.grad.def_abstract_eval(
        lambda x, thr, t, *params, **_: x.update(dtype=t.dtype, weak_type=False))

    # -- differentiation
    def spike_jvp(primals, tangents, *, grad_fn, backend):
        x, thr, *params = primals
        tx, tthr = tangents[0], tangents[1]
        y = _bind(ops.spike, *primals, grad_fn=grad_fn, backend=backend)
        lin = None if type(tx) is ad.Zero else tx
        if type(tthr) is not ad.Zero:
            neg = -jnp.broadcast_to(tthr, x.shape).astype(x.dtype)
            lin = neg if lin is None else lin + neg
        if lin is None:  # only parameter tangents: dH/dparams = 0
            return y, _zero_like_out(x, x.dtype)
        return y, _bind(ops.grad, x, thr, lin, *params, grad_fn=grad_fn, backend=backend)

    def grad_jvp(primals, tangents, *, grad_fn, backend):
        x, thr, t, *params = primals
        out = _bind(ops.grad, *primals, grad_fn=grad_fn, backend=backend)
        terms = []
        if type(tangents[2]) is not ad.Zero:  # linear in t
            terms.append(_bind(ops.grad, x, thr, tangents[2], *params, grad_fn=grad_fn,
                               backend=backend))
        moving = [i for i, tan in enumerate(tangents) if i != 2 and type(tan) is not ad.Zero]
        if moving:  # second order: differentiate the reference formula through x, thr, params

            def f(*vals):
                args = list(primals)
                for i, v in zip(moving, vals):
                    args[i] = v
                return _reference_spike_grad(*args, grad_fn=grad_fn)

            _, tan = jax.jvp(f, [primals[i] for i in moving], [tangents[i] for i in moving])
            terms.append(tan)
        if not terms:
            return out, _zero_like_out(x, t.dtype)
        return out, functools.reduce(jnp.add, terms)

    def grad_transpose(ct, x, thr, t, *params, grad_fn, backend):
        if any(ad.is_undefined_primal(v) for v in (x, thr, *params)):
            raise NotImplementedError("spike_grad_p is linear only in its cotangent argument t")
        if type(ct) is ad.Zero:
            ct_t = None
        else:
            ct_t = _bind(ops.grad, x, thr, ct, *params, grad_fn=grad_fn, backend=backend)
        return [None, None, ct_t] + [None] * len(params)

    ad.primitive_jvps[ops.spike] = spike_jvp
    ad.primitive_jvps[ops.grad] = grad_jvp
    ad.primitive_transposes[ops.grad] = grad_transpose
    for op, prim, full in (("spike", ops.spike, (0,)), ("grad", ops.grad, (0, 2))):
        if partition:
            bind = functools.partial(_bind, prim)
        else:  # vmap can reveal a sharded batch axis (explicit): place the batched op anew
            bind = functools.partial(_bind_placed, op)
        batching.primitive_batchers[prim] = _batcher(bind, full)
    return ops


def _zero_like_out(x, dtype):
    return ad.Zero(jax.core.ShapedArray(x.shape, dtype))


def _batcher(bind, full):
    """vmap rule for an elementwise primitive whose operands at indices ``full`` have x's
    shape and whose others (threshold, parameters) broadcast to it from the right."""

    def rule(args, dims, **params):
        size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
        x_rank = args[0].ndim - (dims[0] is not None)
        moved = []
        for i, (a, d) in enumerate(zip(args, dims)):
            if d is None:
                if i in full:  # an x-shaped operand: the output is batched, so is it
                    a = jnp.broadcast_to(a, (size, *a.shape))
            else:
                a = jnp.moveaxis(a, d, 0)
                if i not in full:  # align (B, *p) under (B, *x)
                    a = a.reshape((size,) + (1,) * (x_rank - (a.ndim - 1)) + a.shape[1:])
            moved.append(a)
        return bind(*moved, **params), 0

    return rule


def _bind_placed(op: str, *args, grad_fn, backend):
    """Binds ``op`` ("spike" or "grad") the way ``args[0]``'s placement needs (see
    ``kernels.sharding``): local, partitioned (Auto axes) or in a shard_map (Explicit)."""
    x, params = args[0], dict(grad_fn=grad_fn, backend=backend)
    where = sharding.placement(x)
    # The reference is plain jnp, which XLA partitions by itself; kernels need a hand.
    if backend == "reference" or x.ndim == 0 or x.size == 0 or where.kind == "local":
        return _bind(getattr(_LOCAL, op), *args, **params)
    if where.kind == "auto":
        return _bind(getattr(_PARTITIONED, op), *args, **params)
    return sharding.shard_mapped(lambda *a: (_bind(getattr(_LOCAL, op), *a, **params),),
                                 args, leads=(0,) * len(args), out_leads=(0,),
                                 what="spike", where=where)[0]


# The ops on local arrays: one device, no mesh, inside a shard_map, or the reference backend.
spike_p, spike_grad_p = _LOCAL = _define("", partition=False)
# The same ops for kernels on a multi-device Auto mesh: they lower the kernel through
# custom_partitioning, which needs the device assignment while lowering. jax hands it to
# computations that hold a primitive of this registry (its own cuDNN attention is one). A
# separate pair, because jax refuses such primitives when lowering for an abstract mesh
# (jax.export for cuda on a CPU-only machine), which the local pair must keep supporting.
spike_partitioned_p, spike_grad_partitioned_p = _PARTITIONED = _define("_partitioned",
                                                                        partition=True)
_dispatch_registry.update(_PARTITIONED)


# -- public entry points -----------------------------------------------------------------
def spike(x, surrogate: Surrogate, threshold=None, *, backend: str | None = None):
    """H(x − threshold) with ``surrogate``'s derivative; the engine behind every call."""
    x = real_array(x, "x", integers="float")
    if threshold is None:
        thr = jnp.zeros((), x.dtype)
    else:
        thr = real_array(threshold, "threshold", integers="float")
        check_broadcast(thr.shape, x.shape, "threshold")
        dtype = jnp.result_type(x, thr)
        x, thr = x.astype(dtype), thr.astype(dtype)
    x = x.astype(x.dtype)  # a strongly typed result, eager and under jit alike
    fn, params = grad_fn(surrogate)  # validated arrays, one per numeric parameter
    for name, p in zip(surrogate._split_fields()[0], params):
        check_broadcast(p.shape, x.shape, f"{type(surrogate).__name__}.{name}")
    resolved = dispatch.resolve(backend, op="elementwise")
    if resolved in dispatch.COMPILED:
        x = dispatch.accelerator_only(x, resolved)  # compiling for CPU raises, no fallback
    return _bind_placed("spike", x, thr, *params, grad_fn=fn, backend=resolved)


def fire(v, threshold=0.0, surrogate: Surrogate | None = None, *, backend: str | None = None):
    """Spikes ``H(v − threshold)`` with surrogate gradient, without materialising ``v − threshold``.

    Equal to ``surrogate(v - threshold)`` in value and in every derivative: dH/dv = g′(v − θ),
    dH/dθ = −g′(v − θ) (summed where θ broadcasts), dH/dparams = 0.

    Args:
      v: membrane potential, any shape, a real float (or integer) array.
      threshold: θ, a scalar or an array that broadcasts to ``v``'s shape.
      surrogate: any ``Surrogate`` (built-in or user subclass); default ``Sigmoid()``.
      backend: ``None`` (the configured default), ``"auto"``, ``"reference"``,
        ``"pallas"``, ``"pallas_triton"``, ``"pallas_mgpu"``, ``"interpret"``,
        ``"interpret_mgpu"`` or ``"interpret_tpu"`` (``kernels.dispatch``).

    Returns:
      Spikes in ``result_type(v, threshold)``, ``v``'s shape. A ``v`` sharded across
      devices is processed per shard (docs/scaling.md).

    Example:
      >>> import jax.numpy as jnp, spikefuse
      >>> spikefuse.fire(jnp.array([0.5, 1.0, 1.5]), 1.0)
      Array([0., 1., 1.], dtype=float32)
    """
    if surrogate is None:
        from spikefuse.surrogate._impl import Sigmoid

        surrogate = Sigmoid()
    return spike(v, surrogate, threshold, backend=backend)
