"""The fused backend of the neuron engine: three JAX primitives over the scan kernels.

* ``scan_fwd_p(*xs, *init, *params)`` -> per-step outputs, final states (and, for the
  backward, checkpoints): `kernels.scan.scan_forward` of the step.
* ``scan_tan_p(*xs, *init, *params, *cks, *tangents)`` -> the tangents of those outputs,
  linear in ``tangents`` (the perturbed inputs, initial states and parameters):
  `scan_forward` of the step's ``jax.jvp`` (`JvpStep`). It is the JVP of ``scan_fwd_p``.
* ``scan_bwd_p(*xs, *init, *cks, *params, *cotangents)`` -> gradients:
  `kernels.scan.scan_backward`. It is the transpose of ``scan_tan_p``.

So ``jax.jvp`` runs the forward and the tangent kernel, and ``jax.grad`` (linearize, then
transpose) runs the forward kernel, keeping its inputs and m checkpoint arrays, and the BPTT
kernel — never the tangent kernel. Symbolic zeros tell each rule what is perturbed and which
cotangents exist, so only the gradients asked for are computed. Second-order derivatives
through a fused neuron raise (use the reference backend).

Kernels: for ``"pallas"`` those of the platform the primitives are lowered for — for a GPU
the Triton kernels (``kernels/scan.py``) or the Mosaic GPU ones (``kernels/mgpu_scan.py``),
as ``dispatch.gpu_family`` decides, the Mosaic kernels (``kernels/tpu_scan.py``) for a TPU,
one lowering rule per platform — for ``"pallas_triton"`` / ``"pallas_mgpu"`` that GPU
family, and for ``"interpret"`` / ``"interpret_mgpu"`` / ``"interpret_tpu"`` the Triton /
Mosaic GPU / TPU kernels interpreted (``dispatch.kernel_target``). The families have one call
signature; a `Spec` carries a configuration for each family it may lower to, with one chunk
K, so the checkpoints (part of the primitives' output types) do not depend on the platform.

Layout: operands are the user's arrays, ``[T, *shape]`` per step (time-major, "lead 1") or
broadcastable to ``shape`` per neuron ("lead 0"); each kernel call reshapes them to the
kernels' cells on its own shard (`_local`): ``[T, N]`` / ``[N]`` or ``[1]`` for the GPU
kernels, ``[T, M, D]`` / ``[M, D]`` or ``[1, 1]`` for the TPU ones (``cells`` of each).
``vmap`` adds the batch axis to the neuron dims (the step is elementwise, so that is
exact). Sharded inputs run per shard (``kernels.sharding``): on Explicit mesh axes a bind is
wrapped in a ``shard_map``; on Auto axes a twin primitive lowers the kernel through
``custom_partitioning``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax._src.dispatch import prim_requires_devices_during_lowering as _dispatch_registry
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from spikefuse.kernels import dispatch, mgpu_scan, scan, sharding, tpu_scan
from spikefuse.kernels._compat import silence_triton_deprecation
from spikefuse.neurons import _stepcheck

__all__ = ["JvpStep", "Spec", "forward"]


@dataclasses.dataclass(frozen=True)
class Spec:
    """Static description of one kernel call: a primitive's only parameter.

    Attributes:
      kind: ``"fwd"``, ``"tan"`` or ``"bwd"``.
      step: the flat step ``step(state, xs, params) -> (outs, new_state)``.
      n_x, n_state, n_params, n_out: numbers of inputs, state leaves, parameters (the
        surrogate's included) and per-step outputs.
      out_dtype: dtype of the per-step outputs and final states.
      backend: a kernel backend (``dispatch.kernel_target``).
      config: the Triton kernels' launch configuration (None when they cannot run).
      tpu_config: the TPU kernels' (None when they cannot run); with the same chunk K.
      mgpu_config: the Mosaic GPU kernels' (None when they cannot run); the same K.
      name: the step's name, for error messages.
      save_ck: fwd: also return the checkpoints.
      tx, tinit, tparams: tan: which inputs, initial states and parameters are perturbed
        (their tangents are operands, in that order).
      d_outs, d_finals: bwd: which outputs' cotangents are operands (nonzero).
      want_x, want_init, want_params: bwd: which gradients to return.
    """

    kind: str
    step: Callable
    n_x: int
    n_state: int
    n_params: int
    n_out: int
    out_dtype: np.dtype
    backend: str
    config: scan.ScanConfig | None
    tpu_config: tpu_scan.TpuScanConfig | None
    mgpu_config: mgpu_scan.MgpuScanConfig | None = None
    name: str = "step"
    save_ck: bool = False
    tx: tuple = ()
    tinit: tuple = ()
    tparams: tuple = ()
    d_outs: tuple = ()
    d_finals: tuple = ()
    want_x: tuple = ()
    want_init: tuple = ()
    want_params: tuple = ()

    def __post_init__(self):
        chunks = {c.chunk for c in self.configs().values()}
        if len(chunks) != 1:
            raise ValueError(f"a Spec needs a kernel configuration, and one chunk K for "
                             f"every kernel family; got {self.configs()}")

    def configs(self) -> dict[str, Any]:
        """The launch configuration of each kernel family that can run, by family."""
        by_family = {"triton": self.config, "mgpu": self.mgpu_config, "tpu": self.tpu_config}
        return {f: c for f, c in by_family.items() if c is not None}

    @property
    def chunk(self) -> int:
        """K, the checkpoint interval of every kernel family."""
        return next(iter(self.configs().values())).chunk

    def n_ck(self, T: int) -> int:
        """Checkpoint arrays of a backward at T steps (none when T <= K)."""
        return self.n_state if scan.num_checkpoints(T, self.chunk) else 0

    def leads(self, T: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per operand and per result: 1 for ``[rows, *shape]``, 0 for per-neuron."""
        xs, init, params, ck = (1,) * self.n_x, (0,) * self.n_state, (0,) * self.n_params, \
            (1,) * self.n_ck(T)
        if self.kind == "fwd":
            outs = (1,) * self.n_out + (0,) * self.n_state + (ck if self.save_ck else ())
            return xs + init + params, outs
        if self.kind == "tan":
            tangents = (1,) * sum(self.tx) + (0,) * (sum(self.tinit) + sum(self.tparams))
            return xs + init + params + ck + tangents, (1,) * self.n_out + (0,) * self.n_state
        cts = (1,) * sum(self.d_outs) + (0,) * sum(self.d_finals)
        grads = (1,) * sum(self.want_x) + (0,) * (sum(self.want_init) + sum(self.want_params))
        return xs + init + ck + params + cts, grads


@dataclasses.dataclass(frozen=True)
class JvpStep:
    """The step's forward-mode derivative as a step: state ``(*state, *tangent_state)``,
    inputs ``(*xs, *perturbed input tangents)``, parameters ``(*params, *perturbed
    parameter tangents)``; per-step outputs are the tangents of the step's outputs."""

    step: Callable
    n_state: int
    tx: tuple
    tparams: tuple

    def __call__(self, state, xs, params):
        m, n_x, n_p = self.n_state, len(self.tx), len(self.tparams)
        ix = [i for i, t in enumerate(self.tx) if t]
        ip = [i for i, t in enumerate(self.tparams) if t]

        def f(st, xw, pw):
            xf, pf = list(xs[:n_x]), list(params[:n_p])
            for i, v in zip(ix, xw):
                xf[i] = v
            for i, v in zip(ip, pw):
                pf[i] = v
            outs, new = self.step(st, tuple(xf), tuple(pf))
            return tuple(outs), tuple(new)

        primals = (tuple(state[:m]), tuple(xs[i] for i in ix), tuple(params[i] for i in ip))
        tangents = (tuple(state[m:]), tuple(xs[n_x:]), tuple(params[n_p:]))
        (_, new), (t_outs, t_new) = jax.jvp(f, primals, tangents)
        return t_outs, (*new, *t_new)


# -- one kernel call on local arrays ------------------------------------------------------
def _vec(p, shape, cells):  # one value shared by all neurons, or one per neuron
    if p.size == 1:
        return p.reshape((1,) * len(cells))
    return jnp.broadcast_to(p, shape).reshape(cells)


def _rows(a, shape, cells):  # [rows, *shape] -> [rows, *cells]
    return jnp.broadcast_to(a, a.shape[:1] + shape).reshape(a.shape[0], *cells)


def _local(*args, spec: Spec, family: str, interpret: bool):
    """The kernel call of ``spec`` on arrays of one device (see the module docstring), with
    the ``family`` ("triton", "mgpu" or "tpu") of kernels."""
    kernels: Any = {"triton": scan, "mgpu": mgpu_scan, "tpu": tpu_scan}[family]
    config = spec.configs().get(family)
    if config is None:  # engine.run gives every family a backend can lower to a config
        raise ValueError(f"no {family} kernel configuration for backend {spec.backend!r}")
    T, shape = args[0].shape[0], tuple(args[0].shape[1:])
    cells = kernels.cells(shape)
    it = iter(args)

    def take(n, lead):
        return [(_rows(a, shape, cells) if lead else _vec(a, shape, cells))
                for a in (next(it) for _ in range(n))]

    m, cdt = spec.n_state, jnp.promote_types(spec.out_dtype, jnp.float32)
    n_ck = spec.n_ck(T)
    kw: dict[str, Any] = dict(config=config, interpret=interpret)
    if spec.kind == "fwd":
        xs, init, params = take(spec.n_x, 1), take(m, 0), take(spec.n_params, 0)
        outs, fins, cks = kernels.scan_forward(
            spec.step, xs, init, params, out_dtypes=(spec.out_dtype,) * spec.n_out,
            final_dtypes=(spec.out_dtype,) * m, save_checkpoints=spec.save_ck, **kw)
        res = [(o, 1) for o in outs] + [(f, 0) for f in fins] + [(c, 1) for c in cks]
    elif spec.kind == "tan":
        xs, init, params = take(spec.n_x, 1), take(m, 0), take(spec.n_params, 0)
        take(n_ck, 1)  # the checkpoints are for the transpose (the backward kernel)
        txs, tinit, tparams = take(sum(spec.tx), 1), iter(take(sum(spec.tinit), 0)), \
            take(sum(spec.tparams), 0)
        tinit = [next(tinit) if t else jnp.zeros((1,) * len(cells), cdt) for t in spec.tinit]
        step = JvpStep(spec.step, m, spec.tx, spec.tparams)
        outs, fins, _ = kernels.scan_forward(
            step, xs + txs, init + tinit, params + tparams,
            out_dtypes=(spec.out_dtype,) * spec.n_out, final_dtypes=(spec.out_dtype,) * 2 * m,
            save_checkpoints=False, **kw)
        res = [(o, 1) for o in outs] + [(f, 0) for f in fins[m:]]
    else:
        xs, init, cks = take(spec.n_x, 1), take(m, 0), take(n_ck, 1)
        params = take(spec.n_params, 0)
        d_outs = iter(take(sum(spec.d_outs), 1))
        d_fins = iter(take(sum(spec.d_finals), 0))
        dxs, dinit, dparams = kernels.scan_backward(
            spec.step, xs, init, cks, params,
            [next(d_outs) if d else None for d in spec.d_outs],
            [next(d_fins) if d else None for d in spec.d_finals],
            want_x=spec.want_x, want_init=spec.want_init, want_params=spec.want_params, **kw)
        res = [(g, 1) for g in dxs if g is not None]
        res += [(g, 0) for g in (*dinit, *dparams) if g is not None]
    return tuple(g.reshape(g.shape[:1] + shape) if lead else g.reshape(shape)
                 for g, lead in res)


@functools.lru_cache(maxsize=256)
def _check_lowerable(spec: Spec, family: str) -> None:
    """``"pallas"``: every primitive of the kernel bodies (the step and its derivative) has
    a lowering rule in ``family``'s Pallas lowering, else a ValueError naming the step and
    the operation, raised while lowering, before any kernel is built."""
    cdt = jnp.promote_types(spec.out_dtype, jnp.float32)
    row = jax.ShapeDtypeStruct((8, 128), cdt)
    state, xs, params = (row,) * spec.n_state, (row,) * spec.n_x, (row,) * spec.n_params

    def backward(state, xs, params):
        out, pullback = jax.vjp(spec.step, state, xs, params)
        return pullback(out)

    _stepcheck.check_lowerable(
        [("in the step", spec.step, (state, xs, params)),
         ("in its derivative, the backward kernel", backward, (state, xs, params))],
        platform=family, name=spec.name, what="spikefuse.neurons.multistep",
        backend=spec.backend)


# -- primitives ---------------------------------------------------------------------------
def _abstract_eval(*avals, spec: Spec):
    x = avals[0]
    T, shape = x.shape[0], x.shape[1:]
    cdt = jnp.promote_types(spec.out_dtype, jnp.float32)
    n_ck = scan.num_checkpoints(T, spec.chunk)

    def like(lead_shape, dtype):  # x's sharding and varying axes, another shape
        return x.update(shape=lead_shape + shape, dtype=jnp.dtype(dtype), weak_type=False)

    seq, vec = like((T,), spec.out_dtype), like((), spec.out_dtype)
    if spec.kind == "fwd":
        cks = [like((n_ck,), cdt)] * spec.n_ck(T) if spec.save_ck else []
        return [seq] * spec.n_out + [vec] * spec.n_state + cks
    if spec.kind == "tan":
        return [seq] * spec.n_out + [vec] * spec.n_state
    dxs = [like((T,), avals[i].dtype) for i, w in enumerate(spec.want_x) if w]
    return dxs + [like((), cdt)] * (sum(spec.want_init) + sum(spec.want_params))


class _Prims:
    """The three primitives of one placement (local, or partitioned for Auto axes)."""

    def __init__(self, suffix: str, partition: bool):
        self.by_kind = {k: Primitive(f"spikefuse_scan_{k}{suffix}") for k in ("fwd", "tan", "bwd")}
        for prim in self.by_kind.values():
            prim.multiple_results = True
            prim.def_abstract_eval(_abstract_eval)
            prim.def_impl(functools.partial(_eager, prim))
            # One rule per platform: "pallas" lowers to the Triton kernels for a GPU and to
            # the Mosaic kernels for a TPU (the default rule covers every other platform).
            for platform in dispatch.LOWERING_PLATFORMS:
                mlir.register_lowering(prim, silence_triton_deprecation()(mlir.lower_fun(
                    functools.partial(_lower, partition=partition,
                                      platform=platform or "cpu"),
                    multiple_results=True)), platform=platform)
            batching.primitive_batchers[prim] = _batch
        ad.primitive_jvps[self.by_kind["fwd"]] = _fwd_jvp
        ad.primitive_jvps[self.by_kind["tan"]] = _no_second_order
        ad.primitive_jvps[self.by_kind["bwd"]] = _no_second_order
        ad.primitive_transposes[self.by_kind["tan"]] = _tan_transpose


@functools.lru_cache(maxsize=256)
def _jitted(prim, spec):
    return jax.jit(functools.partial(prim.bind, spec=spec))


def _eager(prim, *args, spec):
    # Eager calls compile too, so they take the same lowering (and the same clear error for
    # a backend that cannot run here) as traced ones.
    return _jitted(prim, spec)(*args)


def _lower(*args, spec, partition, platform):
    family, interpret = dispatch.kernel_target(spec.backend, platform, "neurons")
    if spec.backend in dispatch.COMPILED and spec.kind == "fwd":  # every path has a forward
        _check_lowerable(spec, family)
    fn: Callable = functools.partial(_local, spec=spec, family=family, interpret=interpret)
    if partition:
        leads, out_leads = spec.leads(args[0].shape[0])
        fn = sharding.partitioned(fn, leads=leads, out_leads=out_leads)
    return fn(*args)


def _bind(kind: str, *args, spec: Spec):
    """Binds the ``kind`` primitive the way ``args[0]``'s placement needs: locally,
    partitioned (Auto mesh axes) or inside a ``shard_map`` (Explicit axes)."""
    spec = dataclasses.replace(spec, kind=kind)
    operands = sharding.match_varying(*args)  # inside a shard_map: one set of varying axes
    x = operands[0]
    where = sharding.placement(x) if x.ndim > 1 and x.size else None
    if where is None or where.kind == "local":
        return _LOCAL.by_kind[kind].bind(*operands, spec=spec)
    if where.kind == "auto":
        return _PARTITIONED.by_kind[kind].bind(*operands, spec=spec)
    leads, out_leads = spec.leads(x.shape[0])
    return list(sharding.shard_mapped(
        lambda *a: tuple(_LOCAL.by_kind[kind].bind(*a, spec=spec)), operands, leads=leads,
        out_leads=out_leads, what="a multi-step neuron (x_seq is [T, *shape])", where=where))


# -- differentiation ----------------------------------------------------------------------
def _split(seq, *sizes):
    out, i = [], 0
    for n in sizes:
        out.append(list(seq[i:i + n]))
        i += n
    out.append(list(seq[i:]))
    return out


def _nonzero(tangents) -> tuple[bool, ...]:
    return tuple(type(t) is not ad.Zero for t in tangents)


def _fwd_jvp(primals, tangents, *, spec: Spec):
    n_x, m, n_p = spec.n_x, spec.n_state, spec.n_params
    xs, init, params, _ = _split(primals, n_x, m, n_p)
    txs, tinit, tparams, _ = _split(tangents, n_x, m, n_p)
    res = _bind("fwd", *primals, spec=dataclasses.replace(spec, save_ck=True))
    n_prim = spec.n_out + m
    cks = res[n_prim:]
    out = res if spec.save_ck else res[:n_prim]
    zeros_ck = [ad.Zero(c.aval.to_tangent_aval()) for c in cks] if spec.save_ck else []
    tx, ti, tp = _nonzero(txs), _nonzero(tinit), _nonzero(tparams)
    if not any(tx + ti + tp):
        return out, [ad.Zero(o.aval.to_tangent_aval()) for o in out]
    present = [t for t in (*txs, *tinit, *tparams) if type(t) is not ad.Zero]
    t_out = _bind("tan", *xs, *init, *params, *cks, *present,
                  spec=dataclasses.replace(spec, tx=tx, tinit=ti, tparams=tp))
    return out, list(t_out) + zeros_ck


def _no_second_order(primals, tangents, *, spec):
    raise NotImplementedError(
        f"second-order derivatives through a fused multi-step neuron (backend "
        f"{spec.backend!r}) are not supported; use backend='reference' for them.")


def _reduce(g, aval):
    """A per-neuron gradient ``[*shape]`` summed to an operand's (broadcastable) shape."""
    shape = aval.shape
    lead = g.ndim - len(shape)
    if lead:
        g = g.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return (g.sum(axis=axes, keepdims=True) if axes else g).astype(aval.dtype)


def _tan_transpose(cts, *args, spec: Spec):
    T = args[0].shape[0] if not ad.is_undefined_primal(args[0]) else args[0].aval.shape[0]
    n_x, m, n_p, n_ck = spec.n_x, spec.n_state, spec.n_params, spec.n_ck(T)
    xs, init, params, cks, lin = _split(args, n_x, m, n_p, n_ck)
    if any(ad.is_undefined_primal(a) for a in (*xs, *init, *params, *cks)):
        raise NotImplementedError("the tangent kernel is linear only in its tangents")
    # Map the linear operands back to the inputs, initial states and parameters.
    slots = [("x", i) for i, t in enumerate(spec.tx) if t]
    slots += [("init", i) for i, t in enumerate(spec.tinit) if t]
    slots += [("param", i) for i, t in enumerate(spec.tparams) if t]
    wanted = {s for s, a in zip(slots, lin) if ad.is_undefined_primal(a)}
    d_outs = [None if type(c) is ad.Zero else c for c in cts[:spec.n_out]]
    d_fins = [None if type(c) is ad.Zero else c for c in cts[spec.n_out:]]
    if not wanted or all(c is None for c in (*d_outs, *d_fins)):
        return [None] * len(args)
    bwd = dataclasses.replace(
        spec, d_outs=tuple(c is not None for c in d_outs),
        d_finals=tuple(c is not None for c in d_fins),
        want_x=tuple(("x", i) in wanted for i in range(n_x)),
        want_init=tuple(("init", i) in wanted for i in range(m)),
        want_params=tuple(("param", i) in wanted for i in range(n_p)))
    grads = iter(_bind("bwd", *xs, *init, *cks, *params,
                       *(c for c in (*d_outs, *d_fins) if c is not None), spec=bwd))
    found = {}
    for kind, flags in (("x", bwd.want_x), ("init", bwd.want_init),
                        ("param", bwd.want_params)):
        for i, w in enumerate(flags):
            if w:
                found[(kind, i)] = next(grads)
    out = []
    for s, a in zip(slots, lin):
        g = found.get(s)
        out.append(None if g is None else (g if s[0] == "x" else _reduce(g, a.aval)))
    return [None] * (len(args) - len(lin)) + out


# -- vmap ---------------------------------------------------------------------------------
def _batch(args, dims, *, spec: Spec):
    """The batch axis becomes the first neuron dim (exact: the step is elementwise)."""
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    T = args[0].shape[1 if dims[0] == 0 else 0]
    leads, out_leads = spec.leads(T)
    x_cells = args[0].ndim - 1 - (dims[0] is not None)
    moved = []
    for a, d, lead in zip(args, dims, leads):
        if d is None:
            if lead:  # a [rows, *shape] operand: the neurons now include the batch
                a = jnp.broadcast_to(jnp.expand_dims(a, 1), a.shape[:1] + (size,) + a.shape[1:])
        else:  # [*lead, B, 1.., *cells]: the batch dim leads the cell dims
            a = jnp.moveaxis(a, d, lead)
            cells = a.ndim - 1 - lead
            a = a.reshape(a.shape[:lead + 1] + (1,) * (x_cells - cells) + a.shape[lead + 1:])
        moved.append(a)
    outs = _bind(spec.kind, *moved, spec=spec)
    return outs, list(out_leads)


_LOCAL = _Prims("", partition=False)
# Kernels on a multi-device Auto mesh lower through custom_partitioning, which needs the
# device assignment while lowering: jax hands it to computations that hold a primitive of
# this registry. A separate set, because jax refuses such primitives when lowering for an
# abstract mesh (jax.export for cuda on a CPU-only machine), which the local set supports.
_PARTITIONED = _Prims("_partitioned", partition=True)
_dispatch_registry.update(_PARTITIONED.by_kind.values())


# -- entry point --------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=0)
def forward(spec: Spec, xs, init, params):
    """The fused forward: ``(outs, finals)`` of ``spec.step`` over ``xs``, differentiable
    in both modes through the rules above."""
    res = _bind("fwd", *xs, *init, *params, spec=spec)
    return tuple(res[:spec.n_out]), tuple(res[spec.n_out:spec.n_out + spec.n_state])
