"""Per-shard execution of the Pallas paths when inputs are sharded across devices.

A ``pallas_call`` is opaque to XLA's SPMD partitioner: left alone, a sharded input is
gathered onto every device before the kernel runs. Our kernels are independent per cell
(per element, per neuron), so each device can run them on its own shard with no
communication. How that is arranged depends on where the sharding is known (`placement`):

* **Explicit mesh axes** (sharding in the types, ``jax.make_mesh``'s default): known while
  tracing, so the kernel call is wrapped in a ``shard_map`` (`shard_mapped`).
* **Auto mesh axes** (``jit`` with ``in_shardings``/``out_shardings``, or arrays placed with
  ``device_put`` on an Auto mesh): decided by the partitioner at compile time, so the kernel
  call is wrapped in ``jax.experimental.custom_partitioning`` (`partitioned`), whose callback
  lowers the kernel on each device's local shapes.
* **No mesh, one device, or inside a ``shard_map`` over every mesh axis**: the kernel runs
  on the arrays it is given (already local).

Layout every wrapped call shares: a *main* operand ``x`` of shape ``[*lead, *cells]``, where
``lead`` are dims the kernel loops over (time, for the neurons; none for the elementwise
ops) and ``cells`` are independent. Every other operand and result is ``[*its lead,
*cells']`` with ``cells'`` broadcasting to ``cells`` from the right (a scalar threshold, a
per-feature parameter, the final membrane ``[*cells]``, ...). Such a dim takes the sharding
of x's dim it lines up with; size-1 (broadcast) dims and lead dims are never sharded.

A lead dim cannot be split (the time loop is sequential). Sharding x along one raises
``ValueError`` when the sharding is explicit; on Auto axes the partitioner reshards x to be
whole along its lead dims (an all-gather along time) before the kernel runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax import shard_map as _jax_shard_map
from jax.experimental.custom_partitioning import SdyShardingRule, custom_partitioning
from jax.sharding import AxisType, NamedSharding, PartitionSpec

__all__ = ["Placement", "check_interpret", "check_lead", "match_varying", "out_struct",
           "partitioned", "placement", "shard_mapped"]


@dataclasses.dataclass(frozen=True)
class Placement:
    """How an array is laid out across devices, as far as the caller can tell.

    Attributes:
      kind: ``"explicit"`` (sharded over Explicit mesh axes: ``spec`` is known),
        ``"auto"`` (Auto mesh axes of size > 1, or no mesh in sight on a multi-device
        machine: the partitioner decides), or ``"local"`` (nothing to split: one device,
        inside a shard_map over every axis, or replicated over Explicit axes).
      mesh: the mesh (concrete for a concrete array, abstract while tracing), or None.
      spec: x's partition spec padded to its rank, for ``"explicit"``; None otherwise.
    """

    kind: str
    mesh: Any = None
    spec: tuple | None = None


_LOCAL = Placement("local")


def placement(x) -> Placement:
    """Where ``x`` (an array or a tracer) lives; see `Placement`."""
    if isinstance(x, jax.core.Tracer):
        sharding = getattr(jax.typeof(x), "sharding", None)
    else:
        sharding = getattr(x, "sharding", None)
    mesh: Any = getattr(sharding, "mesh", None)
    spec = None
    if isinstance(sharding, NamedSharding) and not mesh.empty:
        spec = _padded(sharding.spec, x.ndim)
    else:  # not a NamedSharding (e.g. one device) or not in the type: the context mesh
        mesh = jax.sharding.get_abstract_mesh()
        if mesh is None or mesh.empty:
            # jit's in_shardings do not always reach the types: with several devices, leave
            # it to the partitioner (on one device custom_partitioning just inlines).
            return Placement("auto") if jax.device_count() > 1 else _LOCAL
    types = dict(zip(mesh.axis_names, mesh.axis_types))
    if spec is not None and any(types[a] == AxisType.Explicit
                                for a in _axes(spec)):
        return Placement("explicit", mesh, spec)
    if any(t == AxisType.Auto and mesh.shape[a] > 1 for a, t in types.items()):
        return Placement("auto", mesh)
    return _LOCAL


def _padded(spec, ndim) -> tuple:
    spec = tuple(spec)
    return spec + (None,) * (ndim - len(spec))


def _axes(spec) -> list:
    """The mesh axis names a partition spec mentions."""
    out: list = []
    for entry in spec:
        if entry is None or entry is PartitionSpec.UNCONSTRAINED:
            continue
        out.extend(entry if isinstance(entry, tuple) else (entry,))
    return out


def check_lead(spec, lead: int, what: str) -> None:
    """Raises ValueError when ``spec`` shards any of the first ``lead`` dims."""
    sharded = [i for i in range(lead) if spec[i] is not None]
    if sharded:
        raise ValueError(
            f"{what}: the input is sharded along dim(s) {sharded} (mesh axes "
            f"{[spec[i] for i in sharded]}), which the kernel walks through sequentially "
            "(time). Shard it along the other dims only, e.g. PartitionSpec(None, 'data') "
            "for [T, batch, ...], or reshard it first (jax.sharding.reshard / "
            "jax.device_put).")


# -- aligning every operand and result with x ---------------------------------------------
def _align(shape, lead, x_shape, x_lead) -> list:
    """For each dim of an operand or result: the index of x's dim it shares sharding with,
    or None (a lead dim, a broadcast dim, or a dim of another size)."""
    n_cells, x_cells = len(shape) - lead, len(x_shape) - x_lead
    out = []
    for j, size in enumerate(shape):
        i = None
        if j >= lead:
            i = x_lead + x_cells - n_cells + (j - lead)
            if i < x_lead or size != x_shape[i] or size == 1:
                i = None
        out.append(i)
    return out


def _derived_spec(shape, lead, x_shape, x_lead, x_spec) -> PartitionSpec:
    return PartitionSpec(*(None if i is None else x_spec[i]
                           for i in _align(shape, lead, x_shape, x_lead)))


# -- explicit axes: shard_map while tracing ------------------------------------------------
def shard_mapped(fn: Callable, args: Sequence, *, leads: Sequence[int],
                 out_leads: Sequence[int], what: str, where: Placement):
    """``fn(*args)`` run per shard in a ``shard_map`` over x's explicit sharding.

    An operand laid out as derived from x's sharding enters as its shard. A replicated one
    (say a per-feature threshold while x is sharded over features) enters whole and each
    device slices its part, so that its gradient is summed over devices (an all-reduce)
    rather than gathered. Any other layout is resharded to the derived one first.
    """
    args = tuple(args)
    x_shape, x_lead, spec = args[0].shape, leads[0], where.spec
    check_lead(spec, x_lead, what)
    out_shapes = jax.eval_shape(lambda *a: tuple(fn(*a)), *(
        jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args))
    derived = [_derived_spec(a.shape, lead, x_shape, x_lead, spec)
               for a, lead in zip(args, leads)]
    in_specs, placed, parts = [], [], []
    for a, p in zip(args, derived):
        current: Any = getattr(jax.typeof(a), "sharding", None)
        mesh = getattr(current, "mesh", None)
        current = None if mesh is None or mesh.empty else _padded(current.spec, a.ndim)
        part = None  # the spec to slice a whole operand by, inside the shard_map
        if current != _padded(p, a.ndim):
            if current is None or not _axes(current):  # replicated
                p, part = PartitionSpec(), p
            else:
                a = jax.sharding.reshard(a, NamedSharding(where.mesh, p))
        in_specs.append(p)
        placed.append(a)
        parts.append(part)
    out_specs = tuple(_derived_spec(o.shape, lead, x_shape, x_lead, spec)
                      for o, lead in zip(out_shapes, out_leads))

    def local(*a):
        return tuple(fn(*(v if p is None else _local_part(v, p) for v, p in zip(a, parts))))

    # check_vma=False: what varies over which axis is fully stated by the specs derived here.
    mapped = _jax_shard_map(local, mesh=where.mesh, in_specs=tuple(in_specs),
                            out_specs=out_specs, check_vma=False)
    return mapped(*placed)


def _local_part(a, spec):
    """This device's block of a whole (replicated) ``a``, as ``spec`` would shard it."""
    for dim, entry in enumerate(spec):
        if entry is None:
            continue
        axes = entry if isinstance(entry, tuple) else (entry,)
        size = a.shape[dim] // int(np.prod([jax.lax.axis_size(n) for n in axes]))
        a = jax.lax.dynamic_slice_in_dim(a, jax.lax.axis_index(axes) * size, size, axis=dim)
    return a


# -- Auto axes: custom_partitioning, resolved by the partitioner ---------------------------
def partitioned(fn: Callable, *, leads: Sequence[int], out_leads: Sequence[int]) -> Callable:
    """``fn`` wrapped in ``custom_partitioning``: each device runs ``fn`` on its shard.

    The sharding of x's cell dims propagates to every operand and result that lines up with
    them (a Shardy rule, and an equivalent GSPMD callback); lead dims are made whole. The
    result has no transformation rules of its own (no JVP, no vmap): call it where none is
    needed: the spike and neuron primitives call it from their lowering rules (their own
    rules differentiate and batch them).
    """
    leads, out_leads = tuple(leads), tuple(out_leads)
    x_lead = leads[0]

    def aligns(x_shape, shapes, lds):
        return [_align(tuple(s), lead, tuple(x_shape), x_lead) for s, lead in zip(shapes, lds)]

    def rule(mesh, value_types, result_types):
        # Shardy: dims that share a factor share a sharding. Lead dims get factors of their
        # own that the partition callback below never shards.
        from jax._src.lib.mlir import ir

        shapes = [tuple(ir.RankedTensorType(t).shape) for t in value_types]
        out_shapes = [tuple(ir.RankedTensorType(t).shape) for t in result_types]

        def mapping(align, k):
            return tuple(f"d{i}" if i is not None else f"u{k}_{j}" for j, i in enumerate(align))

        return SdyShardingRule(
            operand_mappings=tuple(mapping(al, k) for k, al in
                                   enumerate(aligns(shapes[0], shapes, leads))),
            result_mappings=tuple(mapping(al, len(shapes) + k) for k, al in
                                  enumerate(aligns(shapes[0], out_shapes, out_leads))))

    def derive(mesh, arg_shapes, result_shape):
        x_shape = arg_shapes[0].shape
        spec = list(_padded(arg_shapes[0].sharding.spec, len(x_shape)))
        spec[:x_lead] = [None] * x_lead  # whole along time: the partitioner reshards x

        def one(align):
            return NamedSharding(mesh, PartitionSpec(
                *(None if i is None else spec[i] for i in align)))

        shapes = [a.shape for a in arg_shapes]
        out_shapes = [r.shape for r in result_shape]
        return (tuple(one(al) for al in aligns(x_shape, shapes, leads)),
                tuple(one(al) for al in aligns(x_shape, out_shapes, out_leads)))

    def partition(mesh, arg_shapes, result_shape):
        arg_shardings, out_shardings = derive(mesh, arg_shapes, result_shape)
        return mesh, lambda *a: tuple(fn(*a)), out_shardings, arg_shardings

    def infer(mesh, arg_shapes, result_shape):  # GSPMD (jax_use_shardy_partitioner=False)
        return derive(mesh, arg_shapes, result_shape)[1]

    wrapped = custom_partitioning(lambda *a: tuple(fn(*a)))
    wrapped.def_partition(partition=partition, infer_sharding_from_operands=infer,
                          sharding_rule=rule)
    return wrapped


# -- inside a user's shard_map ---------------------------------------------------------------
def _varying(x) -> frozenset:
    """The manual mesh axes ``x`` varies over (jax 0.10-0.12 spell it ``manual_axis_type``)."""
    return frozenset(jax.typeof(x).manual_axis_type.varying)


def match_varying(*args) -> list:
    """``args``, each marked varying over every manual mesh axis any of them varies over.

    Inside a ``shard_map`` (``check_vma=True``), an op's operands must agree on the axes
    they vary over; ``jnp`` inserts the casts itself, our primitives and kernels need them
    here. A no-op outside ``shard_map``. The cast's transpose is a ``psum``, which is what
    makes the gradient of a replicated operand (a shared threshold) add up over devices.
    """
    sets = [_varying(a) for a in args]
    union = frozenset().union(*sets)
    return [a if s == union else jax.lax.pcast(a, tuple(sorted(union - s)), to="varying")
            for a, s in zip(args, sets)]


def check_interpret(args, interpret: bool) -> None:
    """Refuses interpret mode inside a ``shard_map`` that checks varying axes: jax's Pallas
    interpreter does not track them (it fails deep inside with a ``pad`` or ``ge``)."""
    if interpret and any(_varying(a) for a in args):
        raise ValueError(
            "backend='interpret', 'interpret_mgpu' or 'interpret_tpu' cannot run inside a "
            "jax.shard_map with check_vma=True: jax's Pallas interpreter does not track "
            "varying mesh axes. Pass check_vma=False to jax.shard_map, or use "
            "backend='reference' (or 'pallas' on a GPU or TPU, which does).")


def out_struct(shape, dtype, like) -> jax.ShapeDtypeStruct:
    """A ``pallas_call`` out_shape varying over the same manual axes as ``like``."""
    mat = jax.typeof(like).manual_axis_type
    if not mat.varying:
        return jax.ShapeDtypeStruct(shape, dtype)
    return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=mat)
