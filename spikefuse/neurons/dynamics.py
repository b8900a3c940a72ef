"""One pure single-step function per built-in neuron: the single source of truth of its dynamics.

Each step follows the engine's step contract (``shared/spec/neurons.md``, "Any neuron"):
``step(state, x_t, params, fire) -> (s_t, new_state)``, elementwise over neurons, where
``params`` is a dict of numeric parameters and ``fire(h, threshold)`` is the Heaviside spike
with its surrogate derivative, handed in by the engine. The same step is traced by the
``lax.scan`` reference and inside the Pallas scan kernels, whose backward differentiates it
with ``jax.vjp`` in the kernel body. Static options (reset mode, ``decay_input``,
``detach_reset``) are fields of a frozen dataclass, so a step is hashable and compared by
value: two calls with the same options share their compiled kernels.

So a step uses only elementwise jnp operations the Triton lowering accepts, and no division
or transcendental function of a parameter: a decay is a multiplication by ``inv_tau = 1/τ``
and ALIF's ρ = exp(−1/τ_a) is computed once outside the loop (by ``builtin.py``), because
XLA and Triton round a float division (and may round ``exp``) differently and spikes must be
bit-identical across backends. Multiplication, addition and comparison round the same
everywhere. Everything is computed in the state's dtype (f32 for bf16/f16 inputs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax

__all__ = ["ALIFStep", "IFStep", "LIFStep", "alif_step", "if_step", "lif_step"]


def _reset(h, s, *, v_threshold, v_reset, detach_reset):
    if detach_reset:
        # The s that resets carries no gradient; the s that is output still does.
        s = jax.lax.stop_gradient(s)
    if v_reset is None:  # soft reset: subtract the threshold
        return h - v_threshold * s
    return h * (1.0 - s) + v_reset * s  # hard reset


def _charge(v, x, *, inv_tau, v_reset, decay_input):
    rest = v if v_reset is None else v - v_reset
    if decay_input:
        return v + (x - rest) * inv_tau
    return v - rest * inv_tau + x


def if_step(v, x, *, v_threshold, v_reset, detach_reset: bool, fire: Callable):
    """One integrate-and-fire step: h = v + x; s = H(h - v_th); reset.

    Args:
      v: membrane before the step.
      x: input current x_t, in v's dtype.
      v_threshold: firing threshold.
      v_reset: reset potential (hard reset), or None for a soft reset (v = h - v_th·s).
      detach_reset: the s used in the reset carries no gradient.
      fire: ``fire(h, v_threshold)`` -> H(h - v_threshold) with a surrogate derivative.

    Returns:
      ``(s, v_new)``, both of v's shape and dtype.
    """
    h = v + x
    s = fire(h, v_threshold)
    return s, _reset(h, s, v_threshold=v_threshold, v_reset=v_reset, detach_reset=detach_reset)


def lif_step(v, x, *, inv_tau, v_threshold, v_reset, decay_input: bool, detach_reset: bool,
             fire: Callable):
    """One leaky integrate-and-fire step; the charge decays towards v_reset (0 when soft).

    decay_input=True:  h = v + (x - (v - v_reset)) · inv_tau
    decay_input=False: h = v - (v - v_reset) · inv_tau + x

    Args are those of `if_step`, plus ``inv_tau`` (1/τ) and ``decay_input``.
    """
    h = _charge(v, x, inv_tau=inv_tau, v_reset=v_reset, decay_input=decay_input)
    s = fire(h, v_threshold)
    return s, _reset(h, s, v_threshold=v_threshold, v_reset=v_reset, detach_reset=detach_reset)


def alif_step(v, a, x, *, inv_tau, v_threshold, v_reset, beta, rho, decay_input: bool,
              detach_reset: bool, fire: Callable):
    """One adaptive-threshold LIF step (after Bellec et al. 2018).

    h = LIF charge of v; θ = v_th + β·a; s = H(h − θ); v = reset of h (soft: h − θ·s);
    a = ρ·a + (1 − ρ)·s. ``detach_reset`` stops the gradient of the s used in the reset
    only; the s that updates ``a`` keeps it.

    Args are those of `lif_step`, plus the adaptation ``a``, ``beta`` (β) and ``rho``
    (ρ = exp(−1/τ_a)).

    Returns:
      ``(s, (v_new, a_new))``.
    """
    h = _charge(v, x, inv_tau=inv_tau, v_reset=v_reset, decay_input=decay_input)
    theta = v_threshold + beta * a
    s = fire(h, theta)
    v = _reset(h, s, v_threshold=theta, v_reset=v_reset, detach_reset=detach_reset)
    return s, (v, rho * a + (1.0 - rho) * s)


@dataclasses.dataclass(frozen=True)
class IFStep:
    """`if_step` for the engine; params ``v_threshold`` (and ``v_reset`` when hard)."""

    soft_reset: bool
    detach_reset: bool

    def __call__(self, v, x, params, fire):
        return if_step(v, x, v_threshold=params["v_threshold"],
                       v_reset=None if self.soft_reset else params["v_reset"],
                       detach_reset=self.detach_reset, fire=fire)


@dataclasses.dataclass(frozen=True)
class LIFStep:
    """`lif_step` for the engine (LIF and PLIF); params ``inv_tau``, ``v_threshold`` (and
    ``v_reset`` when hard)."""

    soft_reset: bool
    decay_input: bool
    detach_reset: bool

    def __call__(self, v, x, params, fire):
        return lif_step(v, x, inv_tau=params["inv_tau"], v_threshold=params["v_threshold"],
                        v_reset=None if self.soft_reset else params["v_reset"],
                        decay_input=self.decay_input, detach_reset=self.detach_reset,
                        fire=fire)


@dataclasses.dataclass(frozen=True)
class ALIFStep:
    """`alif_step` for the engine; state ``(v, a)``; params ``inv_tau``, ``v_threshold``,
    ``beta``, ``rho`` (and ``v_reset`` when hard)."""

    soft_reset: bool
    decay_input: bool
    detach_reset: bool

    def __call__(self, state, x, params, fire):
        v, a = state
        return alif_step(v, a, x, inv_tau=params["inv_tau"],
                         v_threshold=params["v_threshold"],
                         v_reset=None if self.soft_reset else params["v_reset"],
                         beta=params["beta"], rho=params["rho"], decay_input=self.decay_input,
                         detach_reset=self.detach_reset, fire=fire)
