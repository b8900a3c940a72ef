"""Built-in multi-step neurons: IF, LIF, PLIF and ALIF, each an instance of the engine.

Classes (pytrees: numeric parameters are leaves, options static) and functionals run a
neuron over ``x_seq`` ``[T, *shape]`` through `engine.run` with a step from ``dynamics.py``:
the ``"reference"`` backend is a ``lax.scan`` of the step, the kernel backends
(``"pallas"`` and the others of ``kernels.dispatch``) the fused scan kernels. Parameters
that enter the step as a function of themselves (1/τ, PLIF's sigmoid(w), ALIF's
ρ = exp(−1/τ_a)) are computed once, outside the loop.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spikefuse._checks import check_bool, real_array
from spikefuse.kernels import mgpu_scan, scan, tpu_scan
from spikefuse.neurons import dynamics, engine
from spikefuse.surrogate import Sigmoid, Surrogate
from spikefuse.surrogate._base import check_surrogate

# A launch configuration of one kernel family (see `engine.run`).
_Config = scan.ScanConfig | mgpu_scan.MgpuScanConfig | tpu_scan.TpuScanConfig

__all__ = ["ALIF", "IF", "LIF", "PLIF", "alif", "integrate_fire", "lif", "plif"]


# -- validation ---------------------------------------------------------------------------
def _check_concrete(value, name: str, ok, requirement: str):
    """Every concrete value (Python or numpy scalar, numpy or non-traced jax array) must
    satisfy ``ok``; traced values cannot be checked and pass."""
    if isinstance(value, (bool, np.bool_, str, jax.core.Tracer)):
        return  # bools and strings are refused by the engine with a TypeError
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return
    if arr.size and not np.all(ok(arr)):
        raise ValueError(f"{name} must be {requirement} (and not NaN) everywhere, got {value}")


def _check_positive(value, name: str):
    _check_concrete(value, name, lambda a: a > 0, "> 0")


def _check_surrogate(surrogate):
    return Sigmoid() if surrogate is None else check_surrogate(surrogate)


def _membrane(x_seq, v0, params, soft: bool, step, surrogate, backend, return_v_seq,
              unroll, config, derive=None):
    """A one-state (membrane) built-in through the engine: v0 defaults to v_reset (0 when
    soft); returns ``(s, v_T)`` or ``(s, v_T, v_seq)``."""
    check_bool(return_v_seq, "return_v_seq")
    if v0 is None:
        v0 = 0.0 if soft else params["v_reset"]
    return engine.run(step, x_seq, v0, params, surrogate=surrogate, backend=backend,
                      return_states=bool(return_v_seq), unroll=unroll, config=config,
                      derive=derive, init_names=("v0",))


def _hard(params: dict, v_reset) -> dict:
    return params if v_reset is None else {**params, "v_reset": v_reset}


def _inv_tau(params: dict) -> dict:  # 1/τ, once, outside every loop
    params = dict(params)
    params["inv_tau"] = 1.0 / params.pop("tau")
    return params


# -- functionals --------------------------------------------------------------------------
def integrate_fire(x_seq, v0=None, *, v_threshold=1.0, v_reset=0.0, detach_reset=False,
                   surrogate: Surrogate | None = None, backend: str | None = None,
                   return_v_seq: bool = False, unroll: int | None = None,
                   config: _Config | None = None):
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
      backend: ``None`` (configured default), ``"auto"``, ``"reference"``, ``"pallas"``,
        ``"pallas_triton"``, ``"pallas_mgpu"``, ``"interpret"``, ``"interpret_mgpu"`` or
        ``"interpret_tpu"``.
      return_v_seq: also return the membrane after each step.
      unroll: reference backend only: ``lax.scan`` steps per iteration (default
        ``reference.default_unroll(T)``).
      config: fused backends only: a ``kernels.scan.ScanConfig`` (Triton kernels), a
        ``kernels.mgpu_scan.MgpuScanConfig`` (Mosaic GPU kernels) or a
        ``kernels.tpu_scan.TpuScanConfig`` (TPU kernels); default: their heuristics.

    Returns:
      ``(spikes, v_final)`` or ``(spikes, v_final, v_seq)``: spikes and ``v_seq`` of
      ``x_seq``'s shape, ``v_final`` of ``shape``, all in ``x_seq``'s dtype (the state is
      carried in f32 for bf16/f16 inputs). Gradients (reverse and forward mode) flow to
      ``x_seq``, ``v0``, the threshold and the reset potential; the surrogate's parameters
      get 0.

    Sharding: an ``x_seq`` sharded across devices over any axis but time runs per shard
    (docs/scaling.md); one sharded along time on Explicit mesh axes
    raises ``ValueError``.

    Example:
      >>> import jax.numpy as jnp
      >>> from spikefuse.neurons import integrate_fire
      >>> s, v = integrate_fire(jnp.full((3, 2), 0.6), backend="reference")
      >>> s[:, 0], v
      (Array([0., 1., 0.], dtype=float32), Array([0.6, 0.6], dtype=float32))
    """
    check_bool(detach_reset, "detach_reset")
    soft = v_reset is None
    step = dynamics.IFStep(soft_reset=soft, detach_reset=bool(detach_reset))
    return _membrane(x_seq, v0, _hard({"v_threshold": v_threshold}, v_reset), soft, step,
                     surrogate, backend, return_v_seq, unroll, config)


def lif(x_seq, v0=None, *, tau=2.0, v_threshold=1.0, v_reset=0.0, decay_input=True,
        detach_reset=False, surrogate: Surrogate | None = None, backend: str | None = None,
        return_v_seq: bool = False, unroll: int | None = None,
        config: _Config | None = None):
    r"""Multi-step leaky integrate-and-fire neuron over a whole sequence.

    Charge with time constant τ (:math:`v_r` = ``v_reset``, 0 for a soft reset):
    ``decay_input=True``: :math:`h_t = v_{t-1} + (x_t - (v_{t-1} - v_r)) / \tau`;
    ``decay_input=False``: :math:`h_t = v_{t-1} - (v_{t-1} - v_r) / \tau + x_t`;
    then fire and reset as in `integrate_fire`. 1/τ is computed once and multiplied in
    every step (so the two backends round identically).

    Args:
      tau: membrane time constant τ > 0, a scalar or an array broadcastable to ``shape``.
      decay_input: whether the input is divided by τ too.
      x_seq, v0, v_threshold, v_reset, detach_reset, surrogate: as in `integrate_fire`.
      backend, return_v_seq, unroll, config: as in `integrate_fire`.

    Returns:
      As `integrate_fire`; gradients also flow to ``tau``.

    Example:
      >>> import jax.numpy as jnp
      >>> from spikefuse.neurons import lif
      >>> s, v = lif(jnp.full((4, 1), 1.5), backend="reference")
      >>> s[:, 0]
      Array([0., 1., 0., 1.], dtype=float32)
    """
    check_bool(decay_input, "decay_input")
    check_bool(detach_reset, "detach_reset")
    _check_positive(tau, "tau")
    soft = v_reset is None
    step = dynamics.LIFStep(soft_reset=soft, decay_input=bool(decay_input),
                            detach_reset=bool(detach_reset))
    params = _hard({"tau": tau, "v_threshold": v_threshold}, v_reset)
    return _membrane(x_seq, v0, params, soft, step, surrogate, backend, return_v_seq, unroll,
                     config, derive=_inv_tau)


def plif(x_seq, v0=None, *, w=0.0, v_threshold=1.0, v_reset=0.0, decay_input=True,
         detach_reset=False, surrogate: Surrogate | None = None, backend: str | None = None,
         return_v_seq: bool = False, unroll: int | None = None,
         config: _Config | None = None):
    r"""Multi-step parametric LIF neuron (Fang et al., ICCV 2021): a LIF with 1/τ = sigmoid(w).

    Exactly `lif` with :math:`1/\tau = \sigma(w)` (so τ > 1 for every real ``w``), where
    ``w`` is the trainable parameter: a scalar shared by the layer or an array broadcastable
    to ``shape`` (per channel, per neuron). σ(w) is computed once, outside the time loop;
    dL/dw is summed over time and over the neurons that share it.

    Args:
      w: the time-constant parameter; ``w = -log(tau - 1)`` gives time constant ``tau``
        (the default ``w = 0`` is τ = 2), a scalar or an array broadcastable to ``shape``.
      x_seq, v0, v_threshold, v_reset, decay_input, detach_reset: as in `lif`.
      surrogate, backend, return_v_seq, unroll, config: as in `lif`.

    Returns:
      As `lif`; gradients flow to ``w`` instead of ``tau``.

    Example:
      >>> import jax.numpy as jnp
      >>> from spikefuse.neurons import plif
      >>> s, v = plif(jnp.full((4, 1), 1.5), w=0.0, backend="reference")  # tau = 2
      >>> s[:, 0]
      Array([0., 1., 0., 1.], dtype=float32)
    """
    check_bool(decay_input, "decay_input")
    check_bool(detach_reset, "detach_reset")
    soft = v_reset is None
    step = dynamics.LIFStep(soft_reset=soft, decay_input=bool(decay_input),
                            detach_reset=bool(detach_reset))

    def derive(params):
        params = dict(params)
        params["inv_tau"] = jax.nn.sigmoid(params.pop("w"))
        return params

    params = _hard({"w": w, "v_threshold": v_threshold}, v_reset)
    return _membrane(x_seq, v0, params, soft, step, surrogate, backend, return_v_seq, unroll,
                     config, derive=derive)


def alif(x_seq, v0=None, a0=None, *, tau=2.0, tau_a=20.0, beta=1.8, v_threshold=1.0,
         v_reset=0.0, decay_input=True, detach_reset=False,
         surrogate: Surrogate | None = None, backend: str | None = None,
         return_states: bool = False, unroll: int | None = None,
         config: _Config | None = None):
    r"""Multi-step adaptive-threshold LIF neuron (after Bellec et al., NeurIPS 2018).

    State :math:`(v, a)`. Per step: :math:`h_t` = the LIF charge of :math:`v_{t-1}` (τ,
    ``decay_input``, ``v_reset`` as in `lif`); :math:`\theta_t = v_{th} + \beta a_{t-1}`;
    :math:`s_t = H(h_t - \theta_t)`; :math:`v_t = h_t (1 - s_t) + v_{reset} s_t` (hard) or
    :math:`h_t - \theta_t s_t` (soft); :math:`a_t = \rho a_{t-1} + (1 - \rho) s_t` with
    :math:`\rho = e^{-1/\tau_a}` (computed once). ``detach_reset`` stops the gradient of the
    spike in the reset only; the spike that drives :math:`a` keeps it.

    Args:
      x_seq: input currents ``[T, *shape]`` (T >= 1, floating).
      v0: initial membrane; default ``v_reset`` (0 when soft).
      a0: initial adaptation; default 0.
      tau: membrane time constant τ > 0.
      tau_a: adaptation time constant τ_a > 0.
      beta: adaptation strength β >= 0.
      return_states: also return the states after each step.
      v_threshold, v_reset, decay_input, detach_reset, surrogate: as in `lif`.
      backend, unroll, config: as in `lif`. Every numeric parameter is a scalar or an
        array broadcastable to ``shape``.

    Returns:
      ``(spikes, (v_final, a_final))``, or with ``return_states``
      ``(spikes, (v_final, a_final), (v_seq, a_seq))``, in ``x_seq``'s dtype. Gradients
      flow to ``x_seq``, ``v0``, ``a0``, ``tau``, ``tau_a``, ``beta``, ``v_threshold`` and
      ``v_reset``.

    Example:
      >>> import jax.numpy as jnp
      >>> from spikefuse.neurons import alif
      >>> s, (v, a) = alif(jnp.full((6, 1), 1.5), beta=0.5, backend="reference")
      >>> s[:, 0]
      Array([0., 1., 0., 1., 0., 1.], dtype=float32)
    """
    check_bool(decay_input, "decay_input")
    check_bool(detach_reset, "detach_reset")
    check_bool(return_states, "return_states")
    _check_positive(tau, "tau")
    _check_positive(tau_a, "tau_a")
    _check_concrete(beta, "beta", lambda a: a >= 0, ">= 0")
    soft = v_reset is None
    step = dynamics.ALIFStep(soft_reset=soft, decay_input=bool(decay_input),
                             detach_reset=bool(detach_reset))

    def derive(params):
        params = _inv_tau(params)
        params["rho"] = jnp.exp(-1.0 / params.pop("tau_a"))
        return params

    params = _hard({"tau": tau, "tau_a": tau_a, "beta": beta, "v_threshold": v_threshold},
                   v_reset)
    if v0 is None:
        v0 = 0.0 if soft else v_reset
    return engine.run(step, x_seq, (v0, 0.0 if a0 is None else a0), params,
                      surrogate=surrogate, backend=backend, return_states=return_states,
                      unroll=unroll, config=config, derive=derive, init_names=("v0", "a0"))


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
        check_bool(detach_reset, "detach_reset")
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
        check_bool(decay_input, "decay_input")
        check_bool(detach_reset, "detach_reset")
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


class PLIF(_Neuron):
    """Multi-step parametric LIF neuron with a trainable time constant; see `plif`.

    Args:
      init_tau: the initial time constant τ > 1 (a scalar, or an array broadcastable to
        the neuron shape for one τ per channel or neuron); stored as the trainable
        ``w = -log(init_tau - 1)``, so that 1/τ = sigmoid(w).
      v_threshold, v_reset, decay_input, detach_reset, surrogate, backend: as in `LIF`.

    Instances are pytrees: ``w``, the threshold, the reset potential and the surrogate
    parameters are leaves (so ``jax.grad`` of a loss with respect to a model holding a
    ``PLIF`` reaches ``w``); the options are static. ``tau`` gives 1 + exp(-w).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from spikefuse.neurons import PLIF
      >>> neuron = PLIF(init_tau=2.0, backend="reference")
      >>> loss = lambda n, x: n(x)[0].sum()
      >>> grads = jax.grad(loss)(neuron, jnp.full((4, 3), 1.5))
      >>> grads.w.shape
      ()
    """

    _leaves = ("w", "v_threshold", "v_reset", "surrogate")
    _static = ("decay_input", "detach_reset", "backend")
    _order = ("w", "v_threshold", "v_reset", "decay_input", "detach_reset", "surrogate",
              "backend")

    def __init__(self, init_tau=2.0, v_threshold=1.0, v_reset=0.0, decay_input=True,
                 detach_reset=False, surrogate: Surrogate | None = None,
                 backend: str | None = None):
        _check_concrete(init_tau, "init_tau", lambda a: a > 1, "> 1")
        check_bool(decay_input, "decay_input")
        check_bool(detach_reset, "detach_reset")
        self.w: Any  # a Python float for a scalar init_tau, else an array
        if isinstance(init_tau, (int, float)) and not isinstance(init_tau, bool):
            self.w = 0.0 - math.log(init_tau - 1.0)  # 0.0, not -0.0, for tau = 2
        else:
            tau = real_array(init_tau, "init_tau")
            self.w = -jnp.log(tau.astype(jnp.promote_types(tau.dtype, jnp.float32)) - 1.0)
        self.v_threshold = v_threshold
        self.v_reset = v_reset
        self.decay_input = bool(decay_input)
        self.detach_reset = bool(detach_reset)
        self.surrogate = _check_surrogate(surrogate)
        self.backend = backend

    @property
    def tau(self):
        """The current time constant, 1 + exp(-w)."""
        return 1.0 + jnp.exp(-jnp.asarray(self.w))

    def __call__(self, x_seq, v0=None, return_v_seq: bool = False):
        """Runs the neuron over ``x_seq`` ``[T, *shape]``; returns ``(spikes, v_final)`` or
        ``(spikes, v_final, v_seq)``."""
        return plif(x_seq, v0, w=self.w, v_threshold=self.v_threshold, v_reset=self.v_reset,
                    decay_input=self.decay_input, detach_reset=self.detach_reset,
                    surrogate=self.surrogate, backend=self.backend, return_v_seq=return_v_seq)


class ALIF(_Neuron):
    """Multi-step adaptive-threshold LIF neuron; see `alif` for the dynamics.

    Args:
      tau: membrane time constant τ > 0.
      tau_a: adaptation time constant τ_a > 0.
      beta: adaptation strength β >= 0.
      v_threshold, v_reset, decay_input, detach_reset, surrogate, backend: as in `LIF`.

    Instances are pytrees: τ, τ_a, β, the threshold, the reset potential and the surrogate
    parameters are leaves; the options are static.

    Example:
      >>> import jax.numpy as jnp
      >>> from spikefuse.neurons import ALIF
      >>> spikes, (v, a) = ALIF(tau_a=20.0, beta=1.8, backend="reference")(jnp.ones((5, 3)))
    """

    _leaves = ("tau", "tau_a", "beta", "v_threshold", "v_reset", "surrogate")
    _static = ("decay_input", "detach_reset", "backend")
    _order = ("tau", "tau_a", "beta", "v_threshold", "v_reset", "decay_input",
              "detach_reset", "surrogate", "backend")

    def __init__(self, tau=2.0, tau_a=20.0, beta=1.8, v_threshold=1.0, v_reset=0.0,
                 decay_input=True, detach_reset=False, surrogate: Surrogate | None = None,
                 backend: str | None = None):
        _check_positive(tau, "tau")
        _check_positive(tau_a, "tau_a")
        _check_concrete(beta, "beta", lambda a: a >= 0, ">= 0")
        check_bool(decay_input, "decay_input")
        check_bool(detach_reset, "detach_reset")
        self.tau = tau
        self.tau_a = tau_a
        self.beta = beta
        self.v_threshold = v_threshold
        self.v_reset = v_reset
        self.decay_input = bool(decay_input)
        self.detach_reset = bool(detach_reset)
        self.surrogate = _check_surrogate(surrogate)
        self.backend = backend

    def __call__(self, x_seq, v0=None, a0=None, return_states: bool = False):
        """Runs the neuron over ``x_seq`` ``[T, *shape]``; returns ``(spikes, (v, a))`` or
        ``(spikes, (v, a), (v_seq, a_seq))``."""
        return alif(x_seq, v0, a0, tau=self.tau, tau_a=self.tau_a, beta=self.beta,
                    v_threshold=self.v_threshold, v_reset=self.v_reset,
                    decay_input=self.decay_input, detach_reset=self.detach_reset,
                    surrogate=self.surrogate, backend=self.backend,
                    return_states=return_states)
