"""Train a spiking MLP on scikit-learn's bundled 8x8 digits with spikefuse LIF neurons.

    python examples/train_digits.py                      # ~98 % test accuracy, ~7 s on 2 CPU cores
    python examples/train_digits.py --backend interpret  # the fused kernels, interpreted

The network is 64 -> LIF(hidden) -> LIF(10) over T time steps. Each image (pixels scaled to
[0, 1]) is fed either as a constant input current at every step (``--encoding current``, the
default) or as Bernoulli spike trains with the pixel as the firing probability
(``--encoding rate``). The prediction is the output layer's spike count; the loss is the
softmax cross-entropy of the output firing rates (scaled by ``--rate-scale``). Gradients
flow through the spikes by the surrogate derivative (``Sigmoid`` by default) and through
time by backpropagation through the neuron scans. Adam (optax) on seeded minibatches of a
seeded, stratified train/test split; the train step is one ``jax.jit``-compiled function.

Needs the ``examples`` extra: ``pip install -e ".[examples]"`` (optax, scikit-learn).
The dataset ships with scikit-learn: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

try:
    import optax
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
except ImportError as err:  # a clear message instead of a bare traceback
    raise ImportError(f'this example needs optax and scikit-learn: pip install -e ".[examples]" '
                      f"({err})") from err

import spikefuse
from spikefuse import surrogate as sg
from spikefuse.kernels import dispatch
from spikefuse.neurons import LIF

DEFAULTS = dict(epochs=30, steps=8, hidden=256, batch_size=64, lr=5e-3, seed=0,
                tau=2.0, test_size=0.25, encoding="current", rate_scale=5.0,
                surrogate="sigmoid", backend="auto")


def load_data(test_size: float, seed: int):
    """The 1,797 digits as float32 pixels in [0, 1], split stratified by class with ``seed``."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # [1797, 64]; pixels are 0..16
    y = digits.target.astype(np.int32)
    return train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)


def init_params(key, sizes):
    """Dense layers with PyTorch's default uniform(+-1/sqrt(fan_in)) weights and biases."""
    params = []
    for k, (n_in, n_out) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes, sizes[1:])):
        kw, kb = jax.random.split(k)
        bound = 1.0 / np.sqrt(n_in)
        params.append({"w": jax.random.uniform(kw, (n_in, n_out), jnp.float32, -bound, bound),
                       "b": jax.random.uniform(kb, (n_out,), jnp.float32, -bound, bound)})
    return params


def encode(x, steps: int, encoding: str, key):
    """``[B, 64]`` pixels -> ``[T, B, 64]`` inputs: a constant current or Bernoulli spikes."""
    if encoding == "current":
        return jnp.broadcast_to(x, (steps, *x.shape))
    return jax.random.bernoulli(key, x, (steps, *x.shape)).astype(x.dtype)


def build(cfg):
    """The model's forward, loss, jitted train step and jitted evaluation for ``cfg``."""
    surrogate = sg.get(cfg.surrogate)
    hidden = LIF(tau=cfg.tau, surrogate=surrogate, backend=cfg.backend)
    output = LIF(tau=cfg.tau, surrogate=surrogate, backend=cfg.backend)
    optimizer = optax.adam(cfg.lr)

    def forward(params, x, key):
        """Output spike counts ``[B, 10]`` for pixels ``x`` ``[B, 64]``."""
        inp = encode(x, cfg.steps, cfg.encoding, key)  # [T, B, 64]
        l1, l2 = params
        # A dense layer applied at every step: [T, B, n_in] @ [n_in, n_out].
        s1, _ = hidden(inp @ l1["w"] + l1["b"])  # [T, B, hidden]
        s2, _ = output(s1 @ l2["w"] + l2["b"])  # [T, B, 10]
        return s2.sum(axis=0)

    def loss_fn(params, x, y, key):
        rates = forward(params, x, key) / cfg.steps
        return optax.softmax_cross_entropy_with_integer_labels(rates * cfg.rate_scale, y).mean()

    @jax.jit
    def train_step(params, opt_state, x, y, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def accuracy(params, x, y, key):
        return (forward(params, x, key).argmax(axis=-1) == y).mean()

    return optimizer, train_step, accuracy


def train(cfg, log=print) -> dict:
    """Trains with the settings in ``cfg`` (an argparse namespace); returns the metrics."""
    x_train, x_test, y_train, y_test = load_data(cfg.test_size, cfg.seed)
    backend = dispatch.resolve(cfg.backend, op="neurons")
    log(f"spikefuse {spikefuse.__version__} | jax {jax.__version__} | "
        f"{jax.devices()[0].device_kind} | neuron backend {cfg.backend!r} -> {backend!r}")
    log(f"digits: {len(x_train)} train / {len(x_test)} test | 64-{cfg.hidden}-10 LIF, "
        f"T={cfg.steps}, {cfg.encoding} coding, {cfg.surrogate} surrogate, "
        f"batch {cfg.batch_size}, Adam lr {cfg.lr}")

    key = jax.random.PRNGKey(cfg.seed)
    key, k_init = jax.random.split(key)
    params = init_params(k_init, (64, cfg.hidden, 10))
    optimizer, train_step, accuracy = build(cfg)
    opt_state = optimizer.init(params)
    rng = np.random.default_rng(cfg.seed)
    # Whole batches only, so every step has one shape and compiles once; the shuffle changes
    # which few samples wait for the next epoch.
    n_batches = len(x_train) // cfg.batch_size
    if n_batches == 0:
        raise ValueError(f"batch size {cfg.batch_size} exceeds the {len(x_train)} training samples")
    x_test_j, y_test_j = jnp.asarray(x_test), jnp.asarray(y_test)

    losses, accs, seconds = [], [], []
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        order = rng.permutation(len(x_train))
        epoch_loss = []
        for i in range(n_batches):
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            key, k_step = jax.random.split(key)
            params, opt_state, loss = train_step(params, opt_state, jnp.asarray(x_train[idx]),
                                                 jnp.asarray(y_train[idx]), k_step)
            epoch_loss.append(loss)
        key, k_eval = jax.random.split(key)
        acc = float(accuracy(params, x_test_j, y_test_j, k_eval))  # blocks on the epoch
        losses.append(float(jnp.mean(jnp.stack(epoch_loss))))
        accs.append(acc)
        seconds.append(time.perf_counter() - t0)
        note = " (includes compilation)" if epoch == 1 else ""
        log(f"epoch {epoch:3d}/{cfg.epochs}  loss {losses[-1]:.4f}  test acc {100 * acc:6.2f}%  "
            f"{seconds[-1]:6.2f} s{note}")
    total = time.perf_counter() - start
    log(f"final test accuracy {100 * accs[-1]:.2f}% after {cfg.epochs} epochs in {total:.1f} s")
    return {"loss_history": losses, "test_accuracy_history": accs, "epoch_seconds": seconds,
            "test_accuracy": accs[-1], "final_loss": losses[-1], "seconds": total,
            "backend": backend, "params": params}


def parse_args(argv=None) -> argparse.Namespace:
    d = DEFAULTS
    p = argparse.ArgumentParser(
        prog="train_digits.py", description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backend", choices=dispatch.BACKENDS, default=d["backend"],
                   help="neuron backend: auto = pallas on GPU, reference elsewhere; "
                        "interpret = the fused kernels in Pallas interpret mode (slow)")
    p.add_argument("--epochs", type=int, default=d["epochs"], help="passes over the train set")
    p.add_argument("--steps", type=int, default=d["steps"], help="time steps T per image")
    p.add_argument("--hidden", type=int, default=d["hidden"], help="hidden LIF neurons")
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help="minibatch size")
    p.add_argument("--lr", type=float, default=d["lr"], help="Adam learning rate")
    p.add_argument("--seed", type=int, default=d["seed"],
                   help="seed of the split, the weights, the shuffles and the rate coding")
    p.add_argument("--tau", type=float, default=d["tau"], help="LIF membrane time constant")
    p.add_argument("--test-size", type=float, default=d["test_size"],
                   help="fraction of the 1,797 digits held out for testing")
    p.add_argument("--encoding", choices=("current", "rate"), default=d["encoding"],
                   help="current: pixels as a constant input current; rate: Bernoulli spikes")
    p.add_argument("--rate-scale", type=float, default=d["rate_scale"],
                   help="output firing rates are multiplied by this to form the logits")
    p.add_argument("--surrogate", default=d["surrogate"],
                   help="surrogate shape by name, e.g. sigmoid, arctan, slayer_grad")
    args = p.parse_args(argv)
    for name in ("epochs", "steps", "hidden", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0.0 < args.test_size < 1.0:
        p.error("--test-size must be between 0 and 1")
    try:
        sg.get(args.surrogate)
    except ValueError as err:
        p.error(str(err))
    return args


def main(argv=None, log=print) -> dict:
    """Parses ``argv`` (as on the command line), trains, returns the final metrics:
    ``loss_history`` (mean training loss per epoch), ``test_accuracy_history``,
    ``epoch_seconds``, ``test_accuracy``, ``final_loss``, ``seconds``, ``backend`` (resolved)
    and the trained ``params``."""
    return train(parse_args(argv), log=log)


if __name__ == "__main__":
    main(sys.argv[1:])
