"""Izhikevich neurons written as one jnp step, with per-neuron parameters, on spikefuse's engine.

    python examples/izhikevich.py                       # "auto": fused kernels on GPU
    python examples/izhikevich.py --backend interpret   # the fused kernels, interpreted (CPU)

Izhikevich's two-variable model (Euler step dt = 0.5 ms):

    v += dt (0.04 v^2 + 5 v + 140 - u + I_t);  u += dt a (b v - u)
    s = H(v - 30);  v = v (1 - s) + c s;  u = u + d s                (v0 = -65, u0 = b v0)

`izhikevich_step` is that, once, in jnp. Its four parameters travel in ``params``, so each
neuron can have its own: the script simulates the classic firing classes side by side —
regular spiking (a, b, c, d = 0.02, 0.2, -65, 8), intrinsically bursting (0.02, 0.2, -55, 4),
chattering (0.02, 0.2, -50, 2) and fast spiking (0.1, 0.2, -65, 2) — for a range of input
currents, in one call, and prints their spike counts.

``jax.grad`` works through it like through any neuron of the engine (the reset's spike is
detached, as ``detach_reset`` does for the built-ins), but mind what BPTT does here: during
an upswing one Euler step multiplies a membrane perturbation by 1 + dt (0.08 v + 5), more
than 1 above v = -62.5 mV, so gradients through long runs of this quadratic model explode
(10^10 and more after a few hundred milliseconds). Training it needs truncated BPTT or
gradient clipping; this example only simulates.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from spikefuse.kernels import dispatch
from spikefuse.neurons import multistep
from spikefuse.surrogate import Sigmoid

DT = 0.5  # ms per step
CLASSES = {  # (a, b, c, d)
    "regular spiking": (0.02, 0.2, -65.0, 8.0),
    "intrinsically bursting": (0.02, 0.2, -55.0, 4.0),
    "chattering": (0.02, 0.2, -50.0, 2.0),
    "fast spiking": (0.1, 0.2, -65.0, 2.0),
}
SURROGATE = Sigmoid(alpha=0.5)  # g' about 2 mV wide around the 30 mV peak


def izhikevich_step(state, current, p, fire):
    """One Izhikevich step: ``state = (v, u)``, ``p = {"a", "b", "c", "d"}``."""
    v, u = state
    v = v + DT * (0.04 * v * v + 5.0 * v + 140.0 - u + current)
    u = u + DT * p["a"] * (p["b"] * v - u)
    s = fire(v, 30.0)
    reset = jax.lax.stop_gradient(s)  # detach_reset: the spike in the reset has no gradient
    return s, (v * (1.0 - reset) + p["c"] * reset, u + p["d"] * reset)


def init_state(p):
    """v0 = -65, u0 = b v0, per neuron."""
    return (jnp.full(jnp.shape(p["b"]), -65.0), p["b"] * -65.0)


def simulate(currents, params, steps: int, backend: str | None = None):
    """Spikes ``[steps, *shape]`` of neurons with parameters ``params`` (each broadcastable
    to ``shape``) driven by the constant ``currents`` (``shape``)."""
    x_seq = jnp.broadcast_to(currents, (steps, *jnp.shape(currents)))
    return multistep(izhikevich_step, x_seq, init_state(params), params, surrogate=SURROGATE,
                     backend=backend)


def run(steps=1000, currents=(5.0, 10.0, 15.0), backend=None, log=print) -> dict:
    """Spike counts per firing class (rows) and input current (columns)."""
    names = list(CLASSES)
    table = np.array([CLASSES[n] for n in names], np.float32)  # [classes, 4]
    # Neurons [classes, currents]: per-class parameters as [classes, 1] columns.
    params = {k: jnp.asarray(table[:, i:i + 1]) for i, k in enumerate("abcd")}
    grid = jnp.broadcast_to(jnp.asarray(currents, jnp.float32), (len(names), len(currents)))
    start = time.perf_counter()
    counts = np.asarray(jax.jit(lambda g, p: simulate(g, p, steps, backend)[0].sum(axis=0))(
        grid, params))
    seconds = time.perf_counter() - start
    log(f"Izhikevich, {steps} steps of {DT} ms, backend {backend or 'default'!r} -> "
        f"{dispatch.resolve(backend)!r} ({seconds:.1f} s incl. compilation)")
    log(f"spikes in {steps * DT:g} ms per class and input current:")
    log(f"  {'':24s}" + "".join(f"I={c:<6g}" for c in currents))
    for i, name in enumerate(names):
        log(f"  {name:24s}" + "".join(f"{int(n):<8d}" for n in counts[i]))
    return {"counts": counts, "classes": names, "currents": list(currents), "seconds": seconds}


def main(argv=None, log=print) -> dict:
    p = argparse.ArgumentParser(prog="izhikevich.py", description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=dispatch.BACKENDS, default=None,
                   help="spikefuse backend (default: the configured one, 'auto')")
    p.add_argument("--steps", type=int, default=1000, help="time steps of 0.5 ms")
    args = p.parse_args(argv)
    return run(args.steps, backend=args.backend, log=log)


if __name__ == "__main__":
    main(sys.argv[1:])
