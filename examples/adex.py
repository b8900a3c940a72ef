"""AdEx neurons written as one jnp step and run by spikefuse's neuron engine.

    python examples/adex.py                        # "auto": fused kernels on GPU
    python examples/adex.py --backend interpret    # the fused kernels, interpreted (CPU)

The adaptive exponential integrate-and-fire neuron as braintools' documentation writes it
(simplified, Euler, dt folded in; two state variables, v and w):

    dv = -v + exp(v + 50) - w + I_t;  dw = 0.01 (v - w);  v += 0.1 dv;  w += 0.1 dw
    s = H(v + 50);  v = v (1 - s) - 70 s;  w = w + 10 s          (v0 = -70, w0 = 0)

`adex_step` is that, once, in jnp; `spikefuse.neurons.multistep` runs it over a whole
sequence — a ``lax.scan`` on the reference backend, one forward and one BPTT Pallas kernel
on a GPU — and differentiates it (the spike's derivative is the surrogate's, here braintools'
``GaussianGrad(sigma=0.5)``). The script drives N neurons with constant input currents and
fits each neuron's current, by gradient descent through the spikes (Adam), so that it fires
at its own target rate. The reset's spike is detached (its gradient stopped), as
``detach_reset=True`` does for the built-in neurons: without it the surrogate gradient of a
spike count through the strong reset and adaptation points the wrong way for this model.

Needs the ``examples`` extra (optax): ``pip install -e ".[examples]"``.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp

try:
    import optax
except ImportError as err:  # a clear message instead of a bare traceback
    raise ImportError(f'this example needs optax: pip install -e ".[examples]" ({err})') from err

from spikefuse.kernels import dispatch
from spikefuse.neurons import multistep
from spikefuse.surrogate import GaussianGrad

INIT = (-70.0, 0.0)  # (v0, w0)
SURROGATE = GaussianGrad(sigma=0.5)


def adex_step(state, current, params, fire):
    """One AdEx step: ``state = (v, w)``, ``current`` = I_t; returns ``(s, (v, w))``."""
    v, w = state
    dv = -v + jnp.exp(v + 50.0) - w + current
    dw = 0.01 * (v - w)
    v = v + 0.1 * dv
    w = w + 0.1 * dw
    s = fire(v, -50.0)
    reset = jax.lax.stop_gradient(s)  # detach_reset: the spike in the reset has no gradient
    return s, (v * (1.0 - reset) - 70.0 * reset, w + 10.0 * reset)


def simulate(currents, steps: int, backend: str | None = None):
    """Spikes ``[steps, *currents.shape]`` and the final ``(v, w)`` of neurons driven by
    constant ``currents``."""
    x_seq = jnp.broadcast_to(currents, (steps, *jnp.shape(currents)))
    return multistep(adex_step, x_seq, INIT, surrogate=SURROGATE, backend=backend)


def fit(neurons=256, steps=200, iterations=60, lr=2.0, backend=None, log=print) -> dict:
    """Fits per-neuron constant currents to target firing rates; returns the metrics."""
    target = jnp.linspace(0.01, 0.035, neurons)  # spikes per step

    def rates(currents):
        return simulate(currents, steps, backend)[0].mean(axis=0)

    def loss_fn(currents):
        return jnp.mean((rates(currents) - target) ** 2)

    optimizer = optax.adam(lr)

    @jax.jit
    def update(currents, opt_state):
        loss, grad = jax.value_and_grad(loss_fn)(currents)
        updates, opt_state = optimizer.update(grad, opt_state)
        return optax.apply_updates(currents, updates), opt_state, loss

    currents = jnp.full((neurons,), -40.0)
    opt_state = optimizer.init(currents)
    before = float(jnp.mean(jnp.abs(rates(currents) - target)))
    log(f"AdEx, {neurons} neurons x {steps} steps, backend {backend or 'default'!r} -> "
        f"{dispatch.resolve(backend)!r}: mean |rate - target| {before:.4f} spikes/step")
    start = time.perf_counter()
    losses = []
    for i in range(iterations):
        currents, opt_state, loss = update(currents, opt_state)
        losses.append(float(loss))
        if (i + 1) % max(1, iterations // 4) == 0:
            log(f"  iteration {i + 1:4d}  loss {losses[-1]:.2e}")
    after = float(jnp.mean(jnp.abs(rates(currents) - target)))
    seconds = time.perf_counter() - start
    log(f"after {iterations} Adam steps ({seconds:.1f} s): mean |rate - target| {after:.4f} "
        f"(one spike in {steps} steps is {1 / steps:.4f})")
    return {"error_before": before, "error_after": after, "losses": losses,
            "currents": currents, "seconds": seconds}


def main(argv=None, log=print) -> dict:
    p = argparse.ArgumentParser(prog="adex.py", description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=dispatch.BACKENDS, default=None,
                   help="spikefuse backend (default: the configured one, 'auto')")
    p.add_argument("--neurons", type=int, default=256)
    p.add_argument("--steps", type=int, default=200, help="time steps per simulation")
    p.add_argument("--iterations", type=int, default=60, help="Adam steps")
    args = p.parse_args(argv)
    return fit(args.neurons, args.steps, args.iterations, backend=args.backend, log=log)


if __name__ == "__main__":
    main(sys.argv[1:])
