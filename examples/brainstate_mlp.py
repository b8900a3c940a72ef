"""braintools' documented spiking MLP in brainstate, three ways: the migration path to spikefuse.

    python examples/brainstate_mlp.py                   # trains (c), the fused form
    python examples/brainstate_mlp.py --variant all     # (a), (b) and (c), one after another

The model is the ``SpikingMLP`` that braintools' surrogate documentation trains
(784-256-128-10, v <- 0.9 v + W h, a spike where v >= 1, v reset to 0, T = 10 steps, the
mean output spikes against a target by squared error, brainstate's ``grad`` and Adam):

* (a) as written there, with ``braintools.surrogate.Sigmoid``: the time loop in Python,
  every layer one step at a time, a surrogate call in each step;
* (b) the same code with ``spikefuse.surrogate.Sigmoid``: one import line changes, every
  number stays (a drop-in replacement);
* (c) rewritten for spikefuse: each ``Linear`` runs over the whole sequence at once and a
  multi-step ``spikefuse.neurons.LIF`` runs the layer's time loop — on a GPU as one fused
  forward kernel and one backward kernel that keep only their input and a few membrane
  checkpoints, instead of every step's values. ``LIF(tau=10, decay_input=False,
  detach_reset=True)`` is exactly the documented neuron: h = v - v/10 + I is 0.9 v + I,
  and ``detach_reset`` stops the gradient through the reset, as ``jnp.where`` does.

The three compute the same loss and gradients (``tests/test_brainstate_example.py``). The
data is synthetic and needs no download: ten random binary input patterns, one per class,
each input bit flipped with probability 0.05 per sample; the target is the class's one-hot
firing rate.

Needs Python >= 3.12 with brainstate and braintools (``pip install -e ".[test]"`` there).
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

try:
    import brainstate as bst
    import braintools
except ImportError as err:  # a clear message instead of a bare traceback
    raise ImportError("this example needs brainstate and braintools (Python >= 3.12): "
                      f'pip install -e ".[test]" ({err})') from err

import spikefuse.surrogate
from spikefuse.neurons import LIF

SIZES = (784, 256, 128, 10)
VARIANTS = {"a": "braintools.surrogate (as documented)",
            "b": "spikefuse.surrogate (one import changed)",
            "c": "spikefuse.neurons.LIF, fused over the sequence"}


class SpikingMLP(bst.nn.Module):
    """braintools' documented model, as written; only where ``spike_fn`` comes from varies."""

    def __init__(self, layers, spike_fn):
        super().__init__()
        self.layers = []
        for i in range(len(layers) - 1):
            self.layers.append(bst.nn.Linear(layers[i], layers[i + 1]))
        self.v = [bst.State(jnp.zeros(size)) for size in layers[1:]]
        self.spike_fn = spike_fn

    def __call__(self, x, steps=10):
        for v in self.v:                                   # reset states
            v.value = jnp.zeros_like(v.value)
        outputs = []
        for t in range(steps):
            h = x
            for i, (linear, v) in enumerate(zip(self.layers, self.v)):
                v.value = 0.9 * v.value + linear(h)        # integrate
                h = self.spike_fn(v.value - 1.0)           # spike
                v.value = jnp.where(h > 0, 0.0, v.value)   # reset
            outputs.append(h)
        return jnp.mean(jnp.stack(outputs), axis=0)


class FusedSpikingMLP(bst.nn.Module):
    """The same network, each layer a ``Linear`` over the whole sequence and a fused LIF."""

    def __init__(self, layers, backend=None):
        super().__init__()
        self.layers = []
        for i in range(len(layers) - 1):
            self.layers.append(bst.nn.Linear(layers[i], layers[i + 1]))
        # v <- 0.9 v + I; spike where v >= 1; reset to 0, no gradient through the reset.
        self.lif = LIF(tau=10.0, decay_input=False, v_threshold=1.0, v_reset=0.0,
                       detach_reset=True, surrogate=spikefuse.surrogate.Sigmoid(alpha=4.0),
                       backend=backend)

    def __call__(self, x, steps=10):
        current = self.layers[0](x)                     # the input is the same at every step
        h, _ = self.lif(jnp.broadcast_to(current, (steps, *current.shape)))   # [T, batch, n]
        for linear in self.layers[1:]:
            h, _ = self.lif(linear(h))                  # the whole sequence at once
        return jnp.mean(h, axis=0)


def build(variant: str, seed: int = 0, backend=None):
    """Variant ``a``, ``b`` or ``c`` with weights drawn from ``seed`` (the same for all)."""
    bst.random.seed(seed)
    if variant == "a":
        return SpikingMLP(SIZES, braintools.surrogate.Sigmoid(alpha=4.0))
    if variant == "b":
        return SpikingMLP(SIZES, spikefuse.surrogate.Sigmoid(alpha=4.0))
    if variant == "c":
        return FusedSpikingMLP(SIZES, backend=backend)
    raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")


def data(batch: int, seed: int = 0):
    """``(x [batch, 784] of 0/1, target [batch, 10] one-hot)``: noisy class patterns."""
    rng = np.random.default_rng(seed)
    patterns = rng.random((10, SIZES[0])) < 0.2
    labels = rng.integers(0, 10, batch)
    flips = rng.random((batch, SIZES[0])) < 0.05
    x = (patterns[labels] ^ flips).astype(np.float32)
    return jnp.asarray(x), jax.nn.one_hot(labels, 10)


def loss_and_grad(model, steps: int):
    """brainstate's ``grad`` of the documented loss: ``f(x, target) -> (grads, loss)``."""

    @bst.transform.grad(grad_states=model.states(bst.ParamState), return_value=True)
    def loss_fn(x, target):
        output = model(x, steps)
        return jnp.mean((output - target) ** 2)

    return loss_fn


def train(variant: str, *, iterations: int, steps: int, batch: int, lr: float, seed: int,
          backend=None, log=print) -> dict:
    """Trains one variant; returns its losses and seconds per iteration (after the first)."""
    model = build(variant, seed, backend)
    optimizer = braintools.optim.Adam(lr=lr)
    optimizer.register_trainable_weights(model.states(bst.ParamState))
    grad_fn = loss_and_grad(model, steps)

    @bst.transform.jit
    def train_step(x, target):
        grads, loss = grad_fn(x, target)
        optimizer.update(grads)
        return loss

    x, target = data(batch, seed)
    losses, seconds = [], []
    for i in range(iterations):
        t0 = time.perf_counter()
        losses.append(float(train_step(x, target)))
        seconds.append(time.perf_counter() - t0)
        log(f"({variant}) iteration {i + 1:3d}/{iterations}  loss {losses[-1]:.5f}  "
            f"{seconds[-1] * 1e3:8.1f} ms")
    return dict(variant=variant, losses=losses, seconds=seconds)


def main(argv=None, log=print) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=[*VARIANTS, "all"], default="c",
                        help="; ".join(f"{k}: {v}" for k, v in VARIANTS.items()) + " (default c)")
    parser.add_argument("--iterations", type=int, default=30, help="training steps (default 30)")
    parser.add_argument("--steps", type=int, default=10, help="time steps T (default 10)")
    parser.add_argument("--batch", type=int, default=64, help="samples per step (default 64)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default=None,
                        help="(c)'s neuron backend: auto (default), reference, pallas, interpret")
    args = parser.parse_args(argv)
    for flag in ("iterations", "steps", "batch"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1")
    log(f"jax {jax.__version__} | brainstate {bst.__version__} | braintools "
        f"{braintools.__version__} | {jax.devices()[0].device_kind}")
    results = {}
    for v in (VARIANTS if args.variant == "all" else [args.variant]):
        log(f"-- ({v}) {VARIANTS[v]}")
        results[v] = train(v, iterations=args.iterations, steps=args.steps, batch=args.batch,
                           lr=args.lr, seed=args.seed, backend=args.backend, log=log)
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)
