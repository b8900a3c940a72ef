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

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import SdyShardingRule, custom_partitioning
from jax import shard_map as _jax_shard_map
from jax.sharding import AxisType, NamedSharding, PartitionSpec


__all__ = ["Placement", "check_interpret", "match_varying", "out_struct", "partitioned",
           "per_shard", "placement", "shard_mapped"]


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
    mesh: object = None
    spec: tuple | None = None


_LOCAL = Placement("local")


def placement(x) -> Placement:
    """Where ``x`` (an array or a tracer) lives; see `Placement`."""
    if isinstance(x, jax.core.Tracer):
        sharding = getattr(jax.typeof(x), "sharding", None)
    else:
        sharding = getattr(x, "sharding", None)
    mesh = getattr(sharding, "mesh", None)
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
    out = []
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
    derived = [_derived_spec(a.shape, l, x_shape, x_lead, spec) for a, l in zip(args, leads)]
    in_specs, placed, parts = [], [], []
    for a, p in zip(args, derived):
        current = getattr(jax.typeof(a), "sharding", None)
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
    out_specs = tuple(_derived_spec(o.shape, l, x_shape, x_lead, spec)
                      for o, l in zip(out_shapes, out_leads))

    def local(*a):
        return tuple(fn(*(v if p is None else _local_part(v, p) for v, p in zip(a, parts))))

    # check_vma=False: what varies over which axis is fully stated by the specs derived here.
    mapped = _jax_shard_map(local, mesh=where.mesh, in_specs=tuple(in_specs),
                            out_specs=out_specs, check_vma=False)
    return mapped(*placed)


def typed_like(g, like):
    """``g`` (a gradient) laid out like ``like`` (its primal), on Explicit mesh axes.

    A replicated primal whose gradient came out sharded (a per-feature parameter while x
    is sharded over features) is assembled by an all-reduce of zero-padded blocks, the
    transpose of `_local_part`, rather than an all-gather. A no-op off Explicit axes.
    """
    have, want = placement(g), placement(like)
    if have.kind != "explicit" or have.spec == want.spec:
        return g
    if want.kind == "explicit":
        return jax.sharding.reshard(g, jax.typeof(like).sharding)
    spec, mesh = PartitionSpec(*have.spec), have.mesh

    def assemble(part):
        whole = jnp.zeros(g.shape, g.dtype)
        start = [0] * g.ndim
        for dim, entry in enumerate(spec):
            if entry is not None:
                start[dim] = jax.lax.axis_index(entry) * part.shape[dim]
        whole = jax.lax.dynamic_update_slice(whole, part, start)
        return jax.lax.psum(whole, tuple(_axes(spec)))

    return _jax_shard_map(assemble, mesh=mesh, in_specs=spec, out_specs=PartitionSpec(),
                          check_vma=False)(g)


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
    needed, as `per_shard` (under ``custom_vjp``) and the spike primitives' lowering do.
    """
    leads, out_leads = tuple(leads), tuple(out_leads)
    x_lead = leads[0]

    def aligns(x_shape, shapes, lds):
        return [_align(tuple(s), l, tuple(x_shape), x_lead) for s, l in zip(shapes, lds)]

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


def _auto(fn, leads, out_leads, what):
    """`partitioned`, with a vmap rule: the batch axis becomes x's first cell dim."""

    @jax.custom_batching.custom_vmap
    def run(*args):
        return partitioned(fn, leads=leads, out_leads=out_leads)(*args)

    @run.def_vmap
    def rule(axis_size, in_batched, *args):
        x_cells = args[0].ndim - leads[0] - bool(in_batched[0])
        moved = []
        for a, lead, batched in zip(args, leads, in_batched):
            if batched:  # [B, *lead, *cells'] -> [*lead, B, 1.., *cells']
                cells = a.ndim - 1 - lead
                a = jnp.moveaxis(a, 0, lead)
                a = a.reshape(a.shape[:lead + 1] + (1,) * (x_cells - cells) + a.shape[lead + 1:])
            moved.append(a)
        if not in_batched[0]:  # x carries the batch: broadcast it into the new cell dim
            x = jnp.expand_dims(moved[0], leads[0])
            moved[0] = jnp.broadcast_to(x, x.shape[:leads[0]] + (axis_size,) + x.shape[leads[0] + 1:])
        outs = per_shard(fn, moved, leads=leads, out_leads=out_leads, what=what)
        # Every result has full cell rank, so its batch sits right after its lead dims.
        return (tuple(jnp.moveaxis(o, l, 0) for o, l in zip(outs, out_leads)),
                (True,) * len(outs))

    return run


# -- the trace-time entry point ------------------------------------------------------------
def per_shard(fn: Callable, args: Sequence, *, leads: Sequence[int],
              out_leads: Sequence[int], what: str = "the kernel") -> tuple:
    """``fn(*args)``, run shard by shard when ``args[0]`` is sharded over its cell dims.

    For a caller that invokes kernels while tracing (the neurons' ``custom_vjp``); the
    spike primitives call `partitioned` from their lowering rule instead.

    Args:
      fn: a function of arrays returning a tuple of arrays, independent per cell (each
        output cell depends only on the same cell of the inputs): that is what makes
        running it per shard exact.
      args: the operands; ``args[0]`` is the main operand x.
      leads: per operand, how many leading dims are lead (not cell) dims; ``leads[0]`` is
        x's. An operand's cell dims broadcast to x's cell dims from the right.
      out_leads: the same for each result of ``fn``.
      what: named in the error raised for an input sharded along a lead dim.

    Returns:
      The tuple ``fn(*args)``.
    """
    args, leads, out_leads = tuple(args), tuple(leads), tuple(out_leads)
    if args[0].ndim == leads[0] or args[0].size == 0:  # no cell to split
        return tuple(fn(*args))
    where = placement(args[0])
    if where.kind == "explicit":
        return shard_mapped(fn, args, leads=leads, out_leads=out_leads, what=what, where=where)
    if where.kind == "auto":
        return _auto(fn, leads, out_leads, what)(*args)
    return tuple(fn(*args))


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
            "backend='interpret' cannot run inside a jax.shard_map with check_vma=True: "
            "jax's Pallas interpreter does not track varying mesh axes. Pass "
            "check_vma=False to jax.shard_map, or use backend='reference' (or 'pallas' on a "
            "GPU, which does).")


def out_struct(shape, dtype, like) -> jax.ShapeDtypeStruct:
    """A ``pallas_call`` out_shape varying over the same manual axes as ``like``."""
    mat = jax.typeof(like).manual_axis_type
    if not mat.varying:
        return jax.ShapeDtypeStruct(shape, dtype)
    return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=mat)
