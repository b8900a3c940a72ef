"""Multi-step IF and LIF neurons: public classes and functionals over two backends.

* reference: ``lax.scan`` of the step (``reference.py``), differentiated by JAX;
* fused (``"pallas"`` / ``"interpret"``): one Pallas kernel for the forward and one for the
  BPTT backward (``kernels/scan.py``), joined by ``jax.custom_vjp`` here.
Both trace the same step function (``dynamics.py``); ``kernels.dispatch.resolve`` picks one.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from spikefuse._checks import check_broadcast, real_array
from spikefuse.kernels import dispatch
from spikefuse.kernels import scan
from spikefuse.kernels import sharding
from spikefuse.neurons import dynamics
from spikefuse.neurons.reference import multistep_reference
from spikefuse.surrogate import Sigmoid, Surrogate, grad_fn
from spikefuse.surrogate._base import check_surrogate
from spikefuse.surrogate import fire as _fire

__all__ = ["IF", "LIF", "integrate_fire", "lif"]


# -- validation ---------------------------------------------------------------------------
def _neuron_param(value, name: str, shape: tuple, cdt):
    """A numeric parameter as an array in the compute dtype, broadcastable to ``shape``."""
    arr = real_array(value, name)
    check_broadcast(arr.shape, shape, name,
                    "the neuron shape (x_seq's shape without its leading time axis)")
    return arr.astype(cdt)


def _check_positive(value, name: str):
    """Every concrete value (Python or numpy scalar, numpy or non-traced jax array) must be
    > 0 and not NaN; traced values cannot be checked and pass."""
    if isinstance(value, (bool, np.bool_, str, jax.core.Tracer)):
        return  # bools and strings are refused by real_array with a TypeError
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return
    if arr.size and not np.all(arr > 0):
        raise ValueError(f"{name} must be > 0 (and not NaN) everywhere, got {value}")


def _check_bool(value, name: str):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def _check_surrogate(surrogate):
    return Sigmoid() if surrogate is None else check_surrogate(surrogate)


def _check_x_seq(x_seq):
    x = real_array(x_seq, "x_seq", integers="reject")
    if x.ndim < 1:
        raise ValueError("x_seq must have a leading time axis, shape [T, *shape]; got a 0-d "
                         "array")
    if x.shape[0] < 1:
        raise ValueError(f"x_seq must have T >= 1 time steps, got shape {x.shape}")
    return x


# -- fused backend: custom_vjp over the scan kernels -------------------------------------
class _Flags:
    """Static flags carried through custom_vjp residuals as pytree aux data."""

    def __init__(self, value):
        self.value = value


jax.tree_util.register_pytree_node(_Flags, lambda f: ((), f.value), lambda v, _: _Flags(v))


def _is_zero(ct) -> bool:
    return isinstance(ct, jax.custom_derivatives.SymbolicZero)


# The kernels see [T, N] / [N] arrays; the custom_vjp and the sharding wrapper see the user's
# [T, *shape] / broadcastable-to-shape arrays, so flattening happens per shard (flattening a
# sharded [T, *shape] globally could force communication).
def _flat(p, shape):  # [1] for a scalar, [N] for a per-neuron parameter
    return p.reshape(1) if p.size == 1 else jnp.broadcast_to(p, shape).reshape(-1)


def _local_forward(step, gfn, config, interpret, with_v_seq, save_ck, n_params, *args):
    x, v0, params, gparams = args[0], args[1], args[2:2 + n_params], args[2 + n_params:]
    T, shape = x.shape[0], x.shape[1:]
    s, v_T, ck, v_seq = scan.scan_forward(
        step, gfn, x.reshape(T, -1), _flat(v0, shape), tuple(_flat(p, shape) for p in params),
        tuple(_flat(p, shape) for p in gparams), config=config, interpret=interpret,
        save_checkpoints=save_ck, save_v_seq=with_v_seq)
    outs = [s.reshape(x.shape), v_T.reshape(shape)]
    if ck is not None:
        outs.append(ck.reshape(ck.shape[:1] + shape))
    if with_v_seq:
        outs.append(v_seq.reshape(x.shape))
    return tuple(outs)


def _forward(step, gfn, config, interpret, with_v_seq, save_ck, x, v0, params, gparams):
    """(s, v_T, ck or None, v_seq or None), run per shard over the neuron dims."""
    args = (x, v0, *params, *gparams)
    n_ck = scan.num_checkpoints(x.shape[0], config.chunk) if save_ck else 0
    out_leads = (1, 0) + ((1,) if n_ck else ()) + ((1,) if with_v_seq else ())
    outs = list(sharding.per_shard(
        functools.partial(_local_forward, step, gfn, config, interpret, with_v_seq,
                          save_ck, len(params)),
        args, leads=(1,) + (0,) * (len(args) - 1), out_leads=out_leads,
        what="a multi-step neuron (x_seq is [T, *shape])"))
    s, v_T = outs[0], outs[1]
    ck = outs[2] if n_ck else None
    v_seq = outs[-1] if with_v_seq else None
    return s, v_T, ck, v_seq


def _local_backward(step, gfn, config, interpret, want, want_v0, layout, *args):
    n_params, n_g, has_ck, has_ds, has_dvT, has_dvs = layout
    it = iter(args)
    x, v0 = next(it), next(it)
    ck = next(it) if has_ck else None
    params = tuple(next(it) for _ in range(n_params))
    gparams = tuple(next(it) for _ in range(n_g))
    ds = next(it) if has_ds else None
    dv_T = next(it) if has_dvT else None
    dv_seq = next(it) if has_dvs else None
    T, shape = x.shape[0], x.shape[1:]
    seq = (lambda a: None if a is None else a.reshape(T, -1))
    dx, dv0, dps = scan.scan_backward(
        step, gfn, x.reshape(T, -1), _flat(v0, shape), None if ck is None else
        ck.reshape(ck.shape[0], -1), tuple(_flat(p, shape) for p in params),
        tuple(_flat(p, shape) for p in gparams), seq(ds),
        None if dv_T is None else dv_T.reshape(-1), seq(dv_seq), config=config,
        interpret=interpret, param_grads=want, v0_grad=want_v0)
    outs = [dx.reshape(x.shape)]
    outs += [g.reshape(shape) for g in (dv0, *dps) if g is not None]
    return tuple(outs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4))
def _fused(step, gfn, config, interpret, with_v_seq, x, v0, params, gparams):
    s, v_T, _, v_seq = _forward(step, gfn, config, interpret, with_v_seq, False, x, v0,
                                params, gparams)
    return (s, v_T, v_seq) if with_v_seq else (s, v_T)


def _fused_fwd(step, gfn, config, interpret, with_v_seq, x, v0, params, gparams):
    # symbolic_zeros=True: primals arrive wrapped, telling which ones are differentiated,
    # so the backward computes parameter gradients only when asked for.
    want = tuple(bool(p.perturbed) for p in params)
    want_v0 = bool(v0.perturbed)
    x, v0 = x.value, v0.value
    params = tuple(p.value for p in params)
    gparams = tuple(p.value for p in gparams)
    s, v_T, ck, v_seq = _forward(step, gfn, config, interpret, with_v_seq, True, x, v0,
                                 params, gparams)
    out = (s, v_T, v_seq) if with_v_seq else (s, v_T)
    return out, (x, v0, ck, params, gparams, _Flags((want, want_v0)))


def _fused_bwd(step, gfn, config, interpret, with_v_seq, res, cts):
    x, v0, ck, params, gparams, flags = res
    want, want_v0 = flags.value
    ds, dv_T, *rest = (None if _is_zero(c) else c for c in cts)
    dv_seq = rest[0] if with_v_seq else None
    layout = (len(params), len(gparams), ck is not None, ds is not None, dv_T is not None,
              dv_seq is not None)
    present = [(x, 1), (v0, 0), (ck, 1), *((p, 0) for p in (*params, *gparams)), (ds, 1),
               (dv_T, 0), (dv_seq, 1)]
    args = [a for a, _ in present if a is not None]
    leads = [lead for a, lead in present if a is not None]
    n_out = 1 + bool(want_v0) + sum(want)
    outs = list(sharding.per_shard(
        functools.partial(_local_backward, step, gfn, config, interpret, want, want_v0,
                          layout),
        args, leads=leads, out_leads=(1,) + (0,) * (n_out - 1),
        what="a multi-step neuron's backward (x_seq is [T, *shape])"))
    dx = outs.pop(0)
    dv0 = outs.pop(0) if want_v0 else None
    dps = [outs.pop(0) if w else None for w in want]

    def reduce(g, like):  # per-neuron [*shape] -> the operand's shape (summed where broadcast)
        if g is None:
            return None
        lead = g.ndim - like.ndim
        g = g.sum(axis=tuple(range(lead))) if lead else g
        axes = tuple(i for i, n in enumerate(like.shape) if n == 1 and g.shape[i] != 1)
        g = (g.sum(axis=axes, keepdims=True) if axes else g).astype(like.dtype)
        return sharding.typed_like(g, like)  # custom_vjp wants the primal's type

    return (dx, reduce(dv0, v0), tuple(reduce(g, p) for g, p in zip(dps, params)),
            tuple(None for _ in gparams))


_fused.defvjp(_fused_fwd, _fused_bwd, symbolic_zeros=True)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _run_fused(step, gfn, config, interpret, with_v_seq, x, v0, params, gparams):
    # Inside a shard_map, a replicated parameter enters varying like x; the cast's
    # transpose sums its gradient over devices.
    x, v0, *rest = sharding.match_varying(x, v0, *params, *gparams)
    params, gparams = tuple(rest[:len(params)]), tuple(rest[len(params):])
    return _fused(step, gfn, config, interpret, with_v_seq, x, v0, params, gparams)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _run_reference(step, unroll, with_v_seq, x, v0, params, surrogate):
    fire = functools.partial(_fire, surrogate=surrogate, backend="reference")
    # Shaped (and, on Explicit mesh axes, sharded) like one time step of x: the scan carry.
    v0 = v0 + jnp.zeros_like(x[0], dtype=v0.dtype)
    return multistep_reference(step, x, v0, params, fire, unroll=unroll,
                               return_v_seq=with_v_seq)


def _multistep(step, x_seq, v0, named_params: dict, soft_reset: bool, surrogate, backend,
               return_v_seq, unroll, config):
    """Validates, then runs ``step`` on the backend resolved for this call."""
    x = _check_x_seq(x_seq)
    where = sharding.placement(x)
    if where.kind == "explicit":  # the time loop is sequential: T cannot be split
        sharding.check_lead(where.spec, 1, "x_seq")
    surrogate = _check_surrogate(surrogate)
    _check_bool(return_v_seq, "return_v_seq")
    T, shape = x.shape[0], tuple(x.shape[1:])
    # The compute dtype, decided once: f32 state for bf16/f16/f32 inputs, f64 for f64.
    cdt = jnp.promote_types(x.dtype, jnp.float32)
    params = {name: _neuron_param(v, name, shape, cdt) for name, v in named_params.items()}
    if "inv_tau" in step.names:
        params["inv_tau"] = 1.0 / params.pop("tau")  # one division, outside every loop
    if v0 is None:
        v0 = jnp.zeros((), cdt) if soft_reset else params["v_reset"]
    # Left unbroadcast: a scalar v0 travels to the kernels as one value, not N.
    v0 = _neuron_param(v0, "v0", shape, cdt)
    ordered = tuple(params[name] for name in step.names)
    if unroll is not None and (isinstance(unroll, bool) or not isinstance(unroll, int)
                               or unroll < 1):
        raise ValueError(f"unroll must be a positive int, got {unroll!r}")
    if config is not None and not isinstance(config, scan.ScanConfig):
        raise TypeError(f"config must be a spikefuse.kernels.scan.ScanConfig, got "
                        f"{type(config).__name__}")
    N = int(np.prod(shape, dtype=np.int64))
    gfn, gparams = grad_fn(surrogate)
    names = surrogate._split_fields()[0]  # one validated array per parameter (grad_fn)
    gparams = tuple(_neuron_param(p, f"{type(surrogate).__name__}.{name}", shape, cdt)
                    for name, p in zip(names, gparams))

    resolved = dispatch.resolve(backend)
    if resolved == "reference" or N == 0:  # nothing to launch for zero neurons
        return _run_reference(step, unroll, bool(return_v_seq), x, v0, ordered, surrogate)
    if config is None:
        config = scan.default_config(T, N, x.dtype)
    scan.check_size(T, N, config)
    if resolved == "pallas":
        x = dispatch.gpu_only(x)  # compiling for CPU/TPU raises instead of falling back
    return _run_fused(step, gfn, config, resolved == "interpret", bool(return_v_seq), x, v0,
                      ordered, gparams)


# -- functionals --------------------------------------------------------------------------
def integrate_fire(x_seq, v0=None, *, v_threshold=1.0, v_reset=0.0, detach_reset=False,
                   surrogate: Surrogate | None = None, backend: str | None = None,
                   return_v_seq: bool = False, unroll: int | None = None,
                   config: scan.ScanConfig | None = None):
    r"""Multi-step integrate-and-fire neuron over a whole sequence.

    For each step t (per neuron): :math:`h_t = v_{t-1} + x_t`,
    :math:`s_t = H(h_t - v_{th})`, then the reset: hard
    :math:`v_t = h_t (1 - s_t) + v_{reset} s_t`, or soft (``v_reset=None``)
    :math:`v_t = h_t - v_{th} s_t`. H is the Heaviside step, except under differentiation,
    where we take :math:`dH/dh = g'(h - v_{th})` from ``surrogate``.

    Args:
      x_seq: input currents ``[T, *shape]``, time first, a floating array (T >= 1).
      v0: initial membrane, broadcastable to ``shape``; default ``v_reset`` (0 when soft).
      v_threshold: threshold, a scalar or an array broadcastable to ``shape``.
      v_reset: reset potential (hard reset), or None for a soft reset.
      detach_reset: the spike used in the reset carries no gradient.
      surrogate: any ``spikefuse.surrogate.Surrogate``; default ``Sigmoid()``.
      backend: ``None`` (configured default), ``"auto"``, ``"reference"``, ``"pallas"`` or
        ``"interpret"``.
      return_v_seq: also return the membrane after each step.
      unroll: reference backend only: ``lax.scan`` steps per iteration (default
        ``reference.default_unroll(T)``).
      config: fused backends only: a ``kernels.scan.ScanConfig`` (default: its heuristic).

    Returns:
      ``(spikes, v_final)`` or ``(spikes, v_final, v_seq)``: spikes and ``v_seq`` of
      ``x_seq``'s shape, ``v_final`` of ``shape``, all in ``x_seq``'s dtype (the state is
      carried in f32 for bf16/f16 inputs). Gradients flow to ``x_seq``, ``v0``, the
      threshold and the reset potential; the surrogate's parameters get 0.

    Sharding: an ``x_seq`` sharded across devices over any axis but time runs per shard
    (README, "Scaling across devices"); one sharded along time on Explicit mesh axes
    raises ``ValueError``.

    Example:
      >>> import jax.numpy as jnp
      >>> from spikefuse.neurons import integrate_fire
      >>> s, v = integrate_fire(jnp.full((3, 2), 0.6), backend="reference")
      >>> s[:, 0], v
      (Array([0., 1., 0.], dtype=float32), Array([0.6, 0.6], dtype=float32))
    """
    _check_bool(detach_reset, "detach_reset")
    soft = v_reset is None
    step = dynamics.if_spec(soft_reset=soft, detach_reset=bool(detach_reset))
    named = {"v_threshold": v_threshold} if soft else {"v_threshold": v_threshold,
                                                      "v_reset": v_reset}
    return _multistep(step, x_seq, v0, named, soft, surrogate, backend, return_v_seq, unroll,
                      config)


def lif(x_seq, v0=None, *, tau=2.0, v_threshold=1.0, v_reset=0.0, decay_input=True,
        detach_reset=False, surrogate: Surrogate | None = None, backend: str | None = None,
        return_v_seq: bool = False, unroll: int | None = None,
        config: scan.ScanConfig | None = None):
    r"""Multi-step leaky integrate-and-fire neuron over a whole sequence.

    Charge with time constant τ (:math:`v_r` = ``v_reset``, 0 for a soft reset):
    ``decay_input=True``: :math:`h_t = v_{t-1} + (x_t - (v_{t-1} - v_r)) / \tau`;
    ``decay_input=False``: :math:`h_t = v_{t-1} - (v_{t-1} - v_r) / \tau + x_t`;
    then fire and reset as in `integrate_fire`. 1/τ is computed once and multiplied in
    every step (so the two backends round identically).

    Args:
      tau: membrane time constant τ > 0, a scalar or an array broadcastable to ``shape``.
      decay_input: whether the input is divided by τ too.
      Others as in `integrate_fire`.

    Returns:
      As `integrate_fire`; gradients also flow to ``tau``.

    Example:
      >>> import jax.numpy as jnp
      >>> from spikefuse.neurons import lif
      >>> s, v = lif(jnp.full((4, 1), 1.5), backend="reference")
      >>> s[:, 0]
      Array([0., 1., 0., 1.], dtype=float32)
    """
    _check_bool(decay_input, "decay_input")
    _check_bool(detach_reset, "detach_reset")
    _check_positive(tau, "tau")
    soft = v_reset is None
    step = dynamics.lif_spec(soft_reset=soft, decay_input=bool(decay_input),
                             detach_reset=bool(detach_reset))
    named = {"tau": tau, "v_threshold": v_threshold}
    if not soft:
        named["v_reset"] = v_reset
    return _multistep(step, x_seq, v0, named, soft, surrogate, backend, return_v_seq, unroll,
                      config)


# -- classes ------------------------------------------------------------------------------
class _Neuron:
    """Shared pytree and repr machinery: ``_leaves`` are traced, ``_static`` are aux data."""

    _leaves: tuple[str, ...] = ()
    _static: tuple[str, ...] = ()
    _order: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        jax.tree_util.register_pytree_with_keys(
            cls, cls._flatten_with_keys, cls._unflatten, cls._flatten)

    def _flatten(self):
        return ([getattr(self, n) for n in self._leaves],
                tuple(getattr(self, n) for n in self._static))

    def _flatten_with_keys(self):
        children, aux = self._flatten()
        return [(jax.tree_util.GetAttrKey(n), c) for n, c in zip(self._leaves, children)], aux

    @classmethod
    def _unflatten(cls, aux, children):
        obj = object.__new__(cls)
        for n, v in zip(cls._leaves, children):
            object.__setattr__(obj, n, v)
        for n, v in zip(cls._static, aux):
            object.__setattr__(obj, n, v)
        return obj

    def __repr__(self):
        args = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._order)
        return f"{type(self).__name__}({args})"


class IF(_Neuron):
    """Multi-step integrate-and-fire neuron; see `integrate_fire` for the dynamics.

    Args:
      v_threshold: threshold (scalar or broadcastable to the neuron shape).
      v_reset: reset potential, or None for a soft reset.
      detach_reset: the spike used in the reset carries no gradient.
      surrogate: a ``spikefuse.surrogate.Surrogate``; default ``Sigmoid()``.
      backend: backend of every call (None: the configured default, resolved per call).

    Instances are pytrees: the threshold, reset potential and surrogate parameters are
    leaves; ``detach_reset`` and ``backend`` are static.

    Example:
      >>> import jax.numpy as jnp
      >>> from spikefuse.neurons import IF
      >>> spikes, v = IF(backend="reference")(jnp.full((3, 2), 0.6))
    """

    _leaves = ("v_threshold", "v_reset", "surrogate")
    _static = ("detach_reset", "backend")
    _order = ("v_threshold", "v_reset", "detach_reset", "surrogate", "backend")

    def __init__(self, v_threshold=1.0, v_reset=0.0, detach_reset=False,
                 surrogate: Surrogate | None = None, backend: str | None = None):
        _check_bool(detach_reset, "detach_reset")
        self.v_threshold = v_threshold
        self.v_reset = v_reset
        self.detach_reset = bool(detach_reset)
        self.surrogate = _check_surrogate(surrogate)
        self.backend = backend

    def __call__(self, x_seq, v0=None, return_v_seq: bool = False):
        """Runs the neuron over ``x_seq`` ``[T, *shape]``; returns ``(spikes, v_final)`` or
        ``(spikes, v_final, v_seq)``."""
        return integrate_fire(x_seq, v0, v_threshold=self.v_threshold, v_reset=self.v_reset,
                              detach_reset=self.detach_reset, surrogate=self.surrogate,
                              backend=self.backend, return_v_seq=return_v_seq)


class LIF(_Neuron):
    """Multi-step leaky integrate-and-fire neuron; see `lif` for the dynamics.

    Args:
      tau: membrane time constant τ > 0.
      v_threshold, v_reset, detach_reset, surrogate, backend: as in `IF`.
      decay_input: whether the input is divided by τ too.

    Instances are pytrees: τ, the threshold, the reset potential and the surrogate
    parameters are leaves; ``decay_input``, ``detach_reset`` and ``backend`` are static.

    Example:
      >>> import jax.numpy as jnp
      >>> from spikefuse.neurons import LIF
      >>> spikes, v = LIF(tau=2.0, backend="reference")(jnp.full((4, 3), 1.5))
    """

    _leaves = ("tau", "v_threshold", "v_reset", "surrogate")
    _static = ("decay_input", "detach_reset", "backend")
    _order = ("tau", "v_threshold", "v_reset", "decay_input", "detach_reset", "surrogate",
              "backend")

    def __init__(self, tau=2.0, v_threshold=1.0, v_reset=0.0, decay_input=True,
                 detach_reset=False, surrogate: Surrogate | None = None,
                 backend: str | None = None):
        _check_positive(tau, "tau")
        _check_bool(decay_input, "decay_input")
        _check_bool(detach_reset, "detach_reset")
        self.tau = tau
        self.v_threshold = v_threshold
        self.v_reset = v_reset
        self.decay_input = bool(decay_input)
        self.detach_reset = bool(detach_reset)
        self.surrogate = _check_surrogate(surrogate)
        self.backend = backend

    def __call__(self, x_seq, v0=None, return_v_seq: bool = False):
        """Runs the neuron over ``x_seq`` ``[T, *shape]``; returns ``(spikes, v_final)`` or
        ``(spikes, v_final, v_seq)``."""
        return lif(x_seq, v0, tau=self.tau, v_threshold=self.v_threshold,
                   v_reset=self.v_reset, decay_input=self.decay_input,
                   detach_reset=self.detach_reset, surrogate=self.surrogate,
                   backend=self.backend, return_v_seq=return_v_seq)
