"""Trace-time checks of a user's step, run before any kernel: is it a neuron step at all?

The fused kernels run a step on one block of neurons at a time, so a step must compute each
neuron from that neuron's own state, inputs and parameters ("elementwise over neurons",
``shared/spec/neurons.md``). `check_elementwise` proves it on the step's jaxpr: every
operation must be elementwise (a known set of primitives), a broadcast, a reshape that only
adds or drops size-1 dims, or a control-flow/call container whose body passes the same
test. Anything else — a reduction, a dot product, a transpose, a slice, a gather, a
cumulative op, ``iota`` (values that depend on a neuron's position) — mixes neurons and is
refused with the step's name, on every backend, rather than computing something different
per backend. Closed-over traced values or arrays (rather than ``params``) are refused too:
the kernels see one block of neurons, not a whole array.

`check_lowerable` asks the Pallas lowering of the target kernel family (Triton or Mosaic GPU
on a GPU, Mosaic on TPU) whether it has a rule for every primitive of the kernel bodies (the
step and its derivative), so an operation the kernel cannot compile (``lax.erf`` or a
``custom_vjp`` for Triton, ``expm1`` for Mosaic GPU and TPU) is refused, naming the
operation, instead of failing deep inside the kernel compiler. The compiled backends run it
while lowering, for the kernel family lowered for.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.extend import core as jcore

__all__ = ["check_elementwise", "check_lowerable", "step_name"]

# Elementwise primitives (one output element from the same-index input elements).
_ELEMENTWISE = frozenset("""
    abs acos acosh add add_any and asin asinh atan atan2 atanh bessel_i0e bessel_i1e cbrt ceil
    clamp clz conj convert_element_type copy copy_p cos cosh digamma div eq erf erf_inv erfc
    exp exp2 expm1 floor ge gt igamma igammac imag integer_pow is_finite le lgamma log log1p
    logistic lt max min mul ne neg nextafter not or polygamma population_count pow real
    reduce_precision rem round rsqrt select_n shift_left shift_right_arithmetic
    shift_right_logical sign sin sinh sqrt square stop_gradient sub tan tanh xor zeta
    one_minus_square log2
""".split())
# Primitives whose bodies are checked instead (their own data flow is elementwise).
_CONTAINERS = frozenset("""
    pjit jit closed_call core_call custom_jvp_call custom_vjp_call custom_vjp_call_jaxpr
    remat remat2 checkpoint cond while custom_lin
""".split())
# Friendlier words for what a refused primitive does.
_KINDS = {
    **dict.fromkeys(("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and",
                     "reduce_or", "reduce_xor", "argmax", "argmin", "reduce"), "a reduction"),
    **dict.fromkeys(("dot_general", "conv_general_dilated"), "a dot product"),
    **dict.fromkeys(("reshape", "transpose", "rev", "concatenate", "pad", "slice",
                     "dynamic_slice", "dynamic_update_slice", "split"),
                    "a reshape or slice"),
    **dict.fromkeys(("gather", "scatter", "scatter-add", "scatter_add", "scatter-mul",
                     "scatter_mul", "scatter-min", "scatter-max"), "a gather or scatter"),
    **dict.fromkeys(("cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"),
                    "a cumulative op"),
    "iota": "values that depend on a neuron's position",
    "sort": "a sort",
}
_HINT = ("A step must compute each neuron from that neuron's own state, inputs and "
         "parameters; put reductions, matmuls, reshapes and gathers in the layer before the "
         "neuron.")


def step_name(step) -> str:
    """A readable name of a user's step for error messages."""
    fn = step
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{name!r}" if fn is step else f"{name!r} (in a functools.partial)"


def _scans_over_an_axis(eqn) -> bool:
    """A ``scan`` with ``xs``: the body sees an operand without its leading axis (a loop
    over, say, neurons). A fixed-count loop (``fori_loop``) only has consts and carries."""
    body = eqn.params["jaxpr"].jaxpr
    return any(outer.aval.shape != inner.aval.shape
               for outer, inner in zip(eqn.invars, body.invars))


def _first_cross_neuron(jaxpr) -> str | None:
    """The name of the first primitive of ``jaxpr`` that is not elementwise, else None."""
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        # Broadcasts and squeezes only copy or drop size-1 dims: no neuron moves.
        if name in _ELEMENTWISE or name in ("broadcast_in_dim", "squeeze"):
            continue
        if name == "reshape":  # fine when it only adds or drops size-1 dims
            shape_in, shape_out = eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape
            if ([d for d in shape_in if d != 1] == [d for d in shape_out if d != 1]
                    and eqn.params.get("dimensions") in (None, ())):
                continue
            return name
        if name == "scan" and _scans_over_an_axis(eqn):
            return "scan over an array axis"
        if name in _CONTAINERS or name == "scan":
            for sub in jcore.jaxprs_in_params(eqn.params):
                bad = _first_cross_neuron(sub)
                if bad:
                    return bad
            continue
        return name
    return None


def check_elementwise(fn, args, *, name: str, what: str):
    """Traces ``fn(*args)`` (avals) and raises ValueError unless it is elementwise.

    Returns the shapes and dtypes of its results (``jax.ShapeDtypeStruct`` leaves).
    ``name`` is the step's name, ``what`` the calling API.
    """
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    for c in closed.consts:
        if isinstance(c, jax.core.Tracer):
            raise ValueError(
                f"{what}: the step {name} closes over a traced value (say a parameter from an "
                "enclosing jit or grad); pass it in `params` instead, so that it is an "
                "operand of the kernels and can be differentiated.")
        if np.size(c) > 1:
            raise ValueError(
                f"{what}: the step {name} closes over an array of shape {np.shape(c)}; pass "
                "per-neuron arrays in `params` (broadcastable to the neuron shape), so that "
                "each block of neurons gets its own part.")
    bad = _first_cross_neuron(closed.jaxpr)
    if bad is not None:
        kind = _KINDS.get(bad.split(" ")[0])
        kind = f" ({kind})" if kind else ""
        raise ValueError(
            f"{what}: the step {name} is not elementwise over neurons: it uses "
            f"`{bad}`{kind}, which mixes neurons. {_HINT}")
    return out_shape


def _lowering_rules(family: str):
    """``(lowers, kernel)``: a predicate on (primitive, inside control flow) and the kernel's
    name for messages."""
    from spikefuse.kernels import _compat

    if family == "triton":
        rules = _compat.triton_lowering_rules()
        return (lambda prim, nested: prim in rules), "the Pallas GPU (Triton) kernel"
    if family == "mgpu":
        from spikefuse.kernels import mgpu_elementwise

        rules = _compat.mosaic_gpu_lowering_rules()
        # Outside control flow the kernel bodies are rewritten first (`lowerable`).
        rewritten = mgpu_elementwise.REWRITTEN
        return ((lambda prim, nested: prim in rules or (not nested and prim.name in rewritten)),
                "the Pallas GPU (Mosaic GPU) kernel")
    if family == "tpu":
        from jax._src.pallas.mosaic import lowering as mosaic
        from jax.experimental.pallas import tpu as pltpu

        # Mosaic keeps one table per core type; the kernels run on the TensorCore.
        rules = mosaic.lowering_rules[pltpu.CoreType.TC]
        return (lambda prim, nested: prim in rules), "the Pallas TPU (Mosaic) kernel"
    raise ValueError(f"no kernel lowering for kernel family {family!r}")


_CONTROL_FLOW = frozenset(("cond", "while", "scan"))


def _first_unlowerable(jaxpr, lowers, nested=False) -> str | None:
    for eqn in jaxpr.eqns:
        if not lowers(eqn.primitive, nested):
            return eqn.primitive.name
        inner = nested or eqn.primitive.name in _CONTROL_FLOW
        for sub in jcore.jaxprs_in_params(eqn.params):
            bad = _first_unlowerable(sub, lowers, inner)
            if bad:
                return bad
    return None


def check_lowerable(bodies, *, platform: str, name: str, what: str, backend: str) -> None:
    """Raises ValueError if a kernel body uses a primitive the kernel family ``platform``'s
    Pallas lowering (``"triton"``, ``"mgpu"``: Mosaic GPU, ``"tpu"``: Mosaic) has no rule
    for. ``bodies``: ``(description, fn, args)`` triples, traced here."""
    lowers, kernel = _lowering_rules(platform)
    for where, fn, args in bodies:
        bad = _first_unlowerable(jax.make_jaxpr(fn)(*args).jaxpr, lowers)
        if bad is not None:
            raise ValueError(
                f"{what}: the step {name} uses `{bad}` ({where}), which {kernel} cannot "
                f"lower (jax {jax.__version__}), so backend={backend!r} cannot run it; "
                "backend='reference' runs it (or rewrite the step with operations the kernel "
                "supports).")
