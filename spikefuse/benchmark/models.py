"""Whole-model training steps: ``python -m spikefuse bench --models``.

One jitted training step — forward over T steps, softmax cross-entropy on the readout of
the last layer's firing rates, backward, optax Adam update — per model and per way a user
could write it. Models (GPU sizes; ``--quick`` shrinks them for a CPU):

* ``mlp``: 784-256-128-10, a LIF after each hidden layer, T=32, batch 1024 (braintools'
  documentation trains this shape at T=10).
* ``conv``: VGG-style on 32x32x3: conv64-conv128-pool-conv256-pool-linear, 3x3 SAME
  convolutions, a LIF after each, T=4, batch 128.
* ``long``: one LIF layer of 1024 neurons (128 inputs) over T=1024 steps, batch 64.

Inputs are random Bernoulli spike trains (rate 0.2, different at every step) and random
labels: the step's cost does not depend on what is learned. Weights are scaled on that
input so that every layer fires (`init_params`; 6-13 % of neurons per step at the sizes
here). Every LIF is spikefuse's default (tau=2, threshold 1, hard reset to 0, inputs
decayed, Sigmoid(alpha=4)).

Variants (the rows of each model):

* ``fused``: ``spikefuse.neurons.LIF`` per layer over the whole sequence, the fused
  kernels (``"pallas"``; ``"interpret"`` when asked for, timings then meaningless);
* ``fused+remat``: the same, each (layer op -> LIF) block under ``jax.checkpoint``: the
  backward recomputes the block from its input spikes instead of keeping x;
* ``fused+bits``: the layer ops as ``spikefuse.memory.spike_matmul`` / ``spike_conv``: they
  keep their input spikes as 1 bit each instead of float32 (a layer after a pooling: its
  pool -> op under ``spikefuse.memory.checkpoint``, pooled spikes not being 0/1);
* ``fused+checkpoint``: each block, from one LIF's spikes to the next LIF's spikes
  ((pool ->) op -> LIF), under ``spikefuse.memory.checkpoint`` with its input spikes kept as
  bits: nothing inside is kept, the backward recomputes the block. The first block's input,
  the data, is kept as it is (it is held anyway), in both;
* ``fused+chunks``: the whole network under one ``spikefuse.memory.scan`` over chunks of
  time (`chunked_forward`, `chunk_steps`): each LIF carries its membrane from chunk to
  chunk, the readout's time-sum rides in the carry, and the backward keeps the data and the
  parameters only — no spikes between layers, no membranes — and recomputes the network one
  chunk at a time, each chunk's starting membranes recomputed from the start
  (``carries="recompute"``), so its working set is one chunk's where ``+checkpoint`` holds
  the largest block's whole sequence at once. It pays 1 + (chunks - 1) / 2 extra forwards
  (``+checkpoint``: one);
* ``scan``: ``LIF(backend="reference")``: ``lax.scan`` with the library's default unroll;
  ``scan+remat`` / ``scan+bits`` / ``scan+checkpoint`` / ``scan+chunks`` the same memory
  modes (timed on a CPU, where the fused kernels do not run);
* ``step-auto`` / ``step-reference`` / ``step-pallas`` / ``step-braintools``: the
  single-step form braintools' documentation writes: the time loop outside (a
  ``lax.scan`` over steps, unroll ``STEP_UNROLL``), every layer inside, a surrogate called
  on ``h - 1`` in each step — ``spikefuse.surrogate.Sigmoid`` under that backend, or
  ``braintools.surrogate.Sigmoid`` where braintools is installed. ``step-pallas`` (GPU
  only) is the measurement behind what ``"auto"`` picks for elementwise calls on GPU.

Each row: median ms per step (min..max), samples/s, XLA's memory account of the compiled
step (temporaries + arguments + outputs, ``compiled.memory_analysis()``), the device's
peak bytes where it reports one (GPU), and the bytes ``jax.vjp`` of the loss keeps for
the backward beyond its inputs, per neuron-step and per layer (``spikefuse.memory``).
Variants that cannot run here (the fused kernels without a GPU) still get that residual
count: it is traced, not run. Without ``--quick`` each variant is also compiled at twice
the batch, for the largest batch whose step fits a 24 and an 80 GiB device (extrapolated
from XLA's account at the two batches, for the platform compiled for); ``--quick`` instead
compiles ``scan``, ``scan+remat``, the ``+checkpoint`` and the ``+chunks`` variants at the
GPU sizes (not run); both print the targets of issue 16 (`targets`).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

import spikefuse
from spikefuse import memory as mem
from spikefuse import surrogate as sf
from spikefuse.benchmark import aot
from spikefuse.benchmark import elementwise as ew
from spikefuse.benchmark.memory import compiled_memory, device_peak_bytes
from spikefuse.benchmark.timing import compile_all, on_accelerator, time_interleaved
from spikefuse.memory import residual_bytes, spike_conv, spike_matmul
from spikefuse.neurons import LIF

__all__ = ["MAX_CHUNKS", "MODELS", "QUICK_MODELS", "VARIANTS", "Model", "available_variants",
           "chain", "chunk_steps", "chunked_forward",
           "format_table", "forward_fn", "gpu_size_memory", "init_params", "inputs",
           "largest_batch", "loss_fn", "memory_sweep", "neuron_shapes", "neuron_steps",
           "plot_memory", "plot_memory_vs_batch", "run", "targets", "train_step_fn"]

TAU, V_TH, ALPHA = 2.0, 1.0, 4.0
INV_TAU = 1.0 / TAU
INPUT_RATE = 0.2
Z_STD = 1.5  # std of every layer's pre-activations after `init_params`' scaling
LR = 1e-3
# lax.scan unroll of the single-step form's time loop: 1 on CPU, where unrolling makes XLA
# slower (spikefuse/neurons/reference.py has the measurements); 8 elsewhere (unmeasured).
STEP_UNROLL = {"cpu": 1}
STEP_UNROLL_DEFAULT = 8
MEMORY_TS = (64, 128, 256, 512, 1024, 2048, 4096)  # the memory-vs-T sweep (`memory_sweep`)


@dataclasses.dataclass(frozen=True)
class Model:
    """A spiking network: input shape (per sample), T, batch and its blocks.

    Blocks: ``("dense", n)`` or ``("conv", channels)`` — the op, then a LIF; ``("pool",)``
    2x2 average pooling of spikes; ``("flatten",)``; ``("readout", classes)`` — a dense
    layer on the firing rates (spikes averaged over time), always last.
    """

    name: str
    T: int
    batch: int
    in_shape: tuple[int, ...]
    blocks: tuple[tuple, ...]

    def with_T(self, T: int) -> Model:
        return dataclasses.replace(self, T=T)


MODELS = {
    "mlp": Model("mlp", 32, 1024, (784,), (("dense", 256), ("dense", 128), ("readout", 10))),
    "conv": Model("conv", 4, 128, (32, 32, 3),
                  (("conv", 64), ("conv", 128), ("pool",), ("conv", 256), ("pool",),
                   ("flatten",), ("readout", 10))),
    "long": Model("long", 1024, 64, (128,), (("dense", 1024), ("readout", 10))),
}
QUICK_MODELS = {
    "mlp": Model("mlp", 8, 32, (784,), (("dense", 256), ("dense", 128), ("readout", 10))),
    "conv": Model("conv", 4, 8, (16, 16, 3),
                  (("conv", 16), ("conv", 32), ("pool",), ("conv", 64), ("pool",),
                   ("flatten",), ("readout", 10))),
    "long": Model("long", 256, 8, (64,), (("dense", 256), ("readout", 10))),
}
VARIANTS = ("fused", "fused+remat", "fused+bits", "fused+checkpoint", "fused+chunks", "scan",
            "scan+remat", "scan+bits", "scan+checkpoint", "scan+chunks", "step-auto",
            "step-reference", "step-pallas", "step-braintools")
MAX_CHUNKS = 8  # +chunks: time in at most this many chunks (`chunk_steps`)
FUSED = tuple(v for v in VARIANTS if v.startswith("fused"))


def _optax():
    try:
        import optax
    except ImportError as err:
        raise ImportError('the model benchmarks train with optax: pip install -e ".[bench]"'
                          ) from err
    return optax


# -- the network ------------------------------------------------------------------------
def _walk(model: Model):
    """``(kind, arg, shape_in, shape_out)`` per block, shapes per sample."""
    shape = tuple(model.in_shape)
    for kind, *arg in model.blocks:
        out: tuple[int, ...]
        if kind in ("dense", "readout"):
            out = (arg[0],)
        elif kind == "conv":
            out = (*shape[:2], arg[0])
        elif kind == "pool":
            out = (shape[0] // 2, shape[1] // 2, shape[2])
        else:  # flatten
            out = (math.prod(shape),)
        yield kind, arg, shape, out
        shape = out


def neuron_shapes(model: Model) -> list[tuple[int, ...]]:
    """The shape (per sample) of each LIF layer, in order."""
    return [out for kind, _, _, out in _walk(model) if kind in ("dense", "conv")]


def _lif(backend: str) -> LIF:
    """The benchmark's neuron on ``backend``."""
    return LIF(tau=TAU, v_threshold=V_TH, surrogate=sf.Sigmoid(alpha=ALPHA), backend=backend)


def neuron_steps(model: Model) -> int:
    """T x batch x neurons, summed over the LIF layers."""
    return model.T * model.batch * sum(math.prod(s) for s in neuron_shapes(model))


def init_params(model: Model, seed: int = 0, x_seq=None) -> list[dict]:
    """Gaussian weights (std 1/sqrt(fan_in)), zero biases; ``{}`` for pool and flatten.

    With ``x_seq``, each layer's weights are then scaled, layer by layer on that input,
    so that its pre-activations have standard deviation ``Z_STD`` (data-dependent init,
    as in LSUV, Mishkin & Matas 2016): every LIF layer fires at a moderate rate at any
    size, where a fixed 1/sqrt(fan_in) init leaves deep layers silent — and a silent
    network's benchmark would time a degenerate model. (numpy draws the numbers: jax's
    random bits compile slowly on a CPU.)
    """
    rng = np.random.default_rng(seed)
    params: list = []
    for kind, arg, shape, _ in _walk(model):
        if kind in ("pool", "flatten"):
            params.append({})
            continue
        w_shape = (3, 3, shape[-1], arg[0]) if kind == "conv" else (math.prod(shape), arg[0])
        w = rng.standard_normal(w_shape, np.float32) / np.float32(
            math.sqrt(math.prod(w_shape[:-1])))  # 1/sqrt(fan_in)
        params.append({"w": jnp.asarray(w), "b": jnp.zeros((arg[0],), jnp.float32)})
    if x_seq is None:
        return params
    return _scaled_to(model, params, x_seq)


@functools.partial(jax.jit, static_argnums=0)
def _scaled_to(model, params, x_seq):
    neuron = _lif("reference")
    params = [dict(p) for p in params]
    h = x_seq
    for (kind, *_), p in zip(model.blocks, params):
        if kind in ("dense", "conv"):
            z = _op(kind, p, h)
            p["w"] = p["w"] * (Z_STD / jnp.maximum(jnp.std(z), 1e-6))
            h = neuron(_op(kind, p, h))[0]
        elif kind in ("pool", "flatten"):
            h = _reshape(kind, h)
    return params


def inputs(model: Model, seed: int = 0):
    """``(x_seq [T, batch, *in_shape] of 0/1 spikes at INPUT_RATE, labels [batch])``."""
    rng = np.random.default_rng(seed)
    x = rng.random((model.T, model.batch, *model.in_shape), np.float32) < INPUT_RATE
    labels = rng.integers(0, model.blocks[-1][1], model.batch, dtype=np.int32)
    return jnp.asarray(x, jnp.float32), jnp.asarray(labels)


def _op(kind, p, h, bits: bool = False):
    """A dense or 3x3 SAME conv layer on ``h`` with any leading (time, batch) dims; with
    ``bits``, ``spike_matmul`` / ``spike_conv`` (``h`` then holds 0/1 spikes)."""
    if kind == "dense":
        return (spike_matmul(h, p["w"]) if bits else h @ p["w"]) + p["b"]
    lead = h.shape[:-3]
    conv = spike_conv if bits else jax.lax.conv_general_dilated
    out = conv(h.reshape(-1, *h.shape[-3:]), p["w"], (1, 1), "SAME",
               dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return (out + p["b"]).reshape(*lead, *out.shape[1:])


def _reshape(kind, h):
    if kind == "pool":  # 2x2 average over the last three dims (H, W, C)
        *lead, H, W, C = h.shape
        return h.reshape(*lead, H // 2, 2, W // 2, 2, C).mean(axis=(-4, -2))
    return h.reshape(*h.shape[:-3], -1)  # flatten H, W, C


def _readout(p, spikes_seq):
    return spikes_seq.mean(axis=0) @ p["w"] + p["b"]


def _reshaped(h, kinds):
    for k in kinds:
        h = _reshape(k, h)
    return h


def _block(kind, pre, neuron, memory, data):
    """One block of the chain: (pools and flattens ``pre``,) the op ``kind``, ``neuron``;
    ``data``: its input is the network's input."""
    # The data (x_seq, an input) is held anyway: kept as it is, not as bits, which the
    # backward would rebuild into a second float32 copy of it.
    spike_argnums = () if data else 1

    def block(p, s):
        return neuron(_op(kind, p, _reshaped(s, pre)))[0]

    if memory == "remat":
        return jax.checkpoint(block)
    if memory == "checkpoint":
        return mem.checkpoint(block, spike_argnums=spike_argnums)
    if memory != "bits":
        return block
    if pre:  # pooled spikes are not 0/1: the pool goes inside, recomputed from the bits
        op = mem.checkpoint(lambda p, s: _op(kind, p, _reshaped(s, pre)),
                            spike_argnums=spike_argnums)
    else:
        op = functools.partial(_op, kind, bits=not data)
    return lambda p, s: neuron(op(p, s))[0]


def chain(model: Model, neuron, memory: str = "") -> list:
    """The multi-step network as a chain, one function ``f(params_i, h) -> h`` per entry of
    ``model.blocks``: each op on [T, batch, ...] at once, then ``neuron`` (a multi-step LIF)
    over T; the last one, the readout, returns the logits.

    ``memory``: ``""`` as written; ``"remat"`` each (op -> LIF) block under
    ``jax.checkpoint``; ``"bits"`` the ops as ``spike_matmul`` / ``spike_conv``, and an op
    after a pooling as ``spikefuse.memory.checkpoint`` of (pool -> op) with the spikes as
    bits (pooled spikes are not 0/1; the pool is linear, so only it is recomputed);
    ``"checkpoint"`` each block from one LIF's spikes to the next, (pool ->) op -> LIF,
    under ``spikefuse.memory.checkpoint`` with its input spikes as bits. With the last two,
    a pool or flatten moves into the next block (its own entry does nothing). (``"chunks"``
    is not a chain: `multistep_forward` runs the whole network under one
    ``spikefuse.memory.scan``.)"""
    if model.blocks[-1][0] != "readout":
        raise ValueError(f"model {model.name} has no readout")
    fns: list = []
    pending: list[str] = []  # pools and flattens moved into the next block
    for kind, *_ in model.blocks:
        if kind in ("pool", "flatten"):
            if memory in ("bits", "checkpoint"):
                pending.append(kind)
                fns.append(lambda p, h: h)
            else:
                fns.append(lambda p, h, kind=kind: _reshape(kind, h))
            continue
        pre, pending = tuple(pending), []
        if kind == "readout":
            fns.append(lambda p, h, pre=pre: _readout(p, _reshaped(h, pre)))
        else:
            data = not any(k in ("dense", "conv") for k, *_ in model.blocks[:len(fns)])
            fns.append(_block(kind, pre, neuron, memory, data))
    return fns


def multistep_forward(model, params, x_seq, neuron, memory: str = ""):
    """The logits of the multi-step network (`chain`) on ``x_seq``; ``memory="chunks"``:
    `chunked_forward`."""
    if memory == "chunks":
        return chunked_forward(model, params, x_seq, neuron)
    h = x_seq
    for f, p in zip(chain(model, neuron, memory), params):
        h = f(p, h)
    return h


def chunked_forward(model, params, x_seq, neuron):
    """+chunks: the logits of the multi-step network, the whole of it under one
    ``spikefuse.memory.scan`` over chunks of time (`chunk_steps`): every layer runs on one
    chunk, each LIF continuing from its membrane at the chunk's start, and the last LIF's
    spikes are summed over time for the readout, all in the carry. The backward keeps the
    scan's inputs only — the data (as it is: ``spikes=False``) and the parameters — and no
    membrane (they start from zeros built inside), no spikes between layers; it recomputes
    each chunk of the whole network, from its start's carry recomputed in turn
    (``carries="recompute"``: no carries held, where one-step chunks would hold nearly every
    step's membranes), so its working set is one chunk's. It pays 1 + (chunks - 1) / 2
    extra forwards."""
    T, B = x_seq.shape[:2]
    last = max(i for i, (kind, *_) in enumerate(model.blocks) if kind in ("dense", "conv"))
    shapes = neuron_shapes(model)
    init = (tuple(jax.ShapeDtypeStruct((B, *s), jnp.float32) for s in shapes),  # zeros
            jax.ShapeDtypeStruct((B, *shapes[-1]), jnp.float32))

    def chunk(carry, x_chunk):
        (vs, total), h = carry, x_chunk
        new: list = []
        for (kind, *_), p in zip(model.blocks[:last + 1], params):
            if kind in ("dense", "conv"):
                h, v = neuron(_op(kind, p, h), vs[len(new)])
                new.append(v)
            else:
                h = _reshape(kind, h)
        return (tuple(new), total + h.sum(axis=0)), ()

    (_, total), _ = mem.scan(chunk, init, x_seq, chunks=T // chunk_steps(T), spikes=False,
                             carries="recompute")
    rates = _reshaped(total / T, [kind for kind, *_ in model.blocks[last + 1:-1]])
    return _readout(params[-1], rates[None])  # (the pools after the last LIF: linear)


def chunk_steps(T: int) -> int:
    """+chunks: steps per chunk, T over the largest number of chunks that divides T and is at
    most ``MAX_CHUNKS`` (T=32: 8 chunks of 4; T=4: 4 of 1)."""
    return T // max(n for n in range(1, min(T, MAX_CHUNKS) + 1) if T % n == 0)


def firing_rates(model: Model, params, x_seq) -> list[float]:
    """The mean spike rate of each LIF layer (reference backend): a benchmark of a silent
    or saturated network would time a degenerate model."""
    return [float(r) for r in _rates(model, params, x_seq)]


@functools.partial(jax.jit, static_argnums=0)
def _rates(model, params, x_seq):
    rates, neuron = [], _lif("reference")

    def recording(z):
        out = neuron(z)
        rates.append(out[0].mean())
        return out

    multistep_forward(model, params, x_seq, recording)
    return rates


def lif_step(v, z, spike_fn):
    """The LIF step as a user writes it: charge, fire, hard reset to 0 — the arithmetic of
    ``spikefuse.neurons.lif``'s step, so the variants compute the same model."""
    h = v + (z - v) * INV_TAU
    s = spike_fn(h - V_TH)
    return h * (1.0 - s), s


def single_step_forward(model, params, x_seq, spike_fn, unroll: int):
    """The time loop outside (``lax.scan``), every layer inside, one step at a time."""
    B = x_seq.shape[1]

    def step(vs, x_t):
        h, new, i = x_t, [], 0
        for (kind, *_), p in zip(model.blocks[:-1], params):
            if kind in ("dense", "conv"):
                v, h = lif_step(vs[i], _op(kind, p, h), spike_fn)
                new.append(v)
                i += 1
            else:
                h = _reshape(kind, h)
        return tuple(new), h

    v0 = tuple(jnp.zeros((B, *s), jnp.float32) for s in neuron_shapes(model))
    _, last = jax.lax.scan(step, v0, x_seq, unroll=min(unroll, model.T))
    return _readout(params[-1], last)


def _spike_fn(variant):
    if variant == "step-braintools":
        return ew.braintools_surrogate().Sigmoid(alpha=ALPHA)
    backend = variant.split("-", 1)[1]
    s = sf.Sigmoid(alpha=ALPHA)

    def spike(u):  # the user's class call, under the backend of this variant
        with spikefuse.use_backend(backend):
            return s(u)

    return spike


def step_unroll() -> int:
    return STEP_UNROLL.get(jax.default_backend(), STEP_UNROLL_DEFAULT)


def forward_fn(model: Model, variant: str, kernel_backend: str | None = None):
    """``f(params, x_seq) -> logits`` for ``variant``; the fused variants run
    ``kernel_backend`` (``"pallas"``/``"interpret"``; ``None``: traced as interpret)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} (choose from {', '.join(VARIANTS)})")
    if variant.startswith(("fused", "scan")):
        neuron = _lif("reference" if variant.startswith("scan")
                      else kernel_backend or "interpret")
        memory = variant.partition("+")[2]
        return lambda params, x: multistep_forward(model, params, x, neuron, memory)
    spike = _spike_fn(variant)
    unroll = step_unroll()
    return lambda params, x: single_step_forward(model, params, x, spike, unroll)


def loss_fn(model: Model, variant: str, kernel_backend: str | None = None):
    """``f(params, x_seq, labels) -> mean softmax cross-entropy``."""
    forward = forward_fn(model, variant, kernel_backend)

    cross_entropy = _optax().softmax_cross_entropy_with_integer_labels

    def loss(params, x_seq, labels):
        return cross_entropy(forward(params, x_seq), labels).mean()

    return loss


def train_step_fn(model: Model, variant: str, kernel_backend: str | None = None):
    """``step(params, opt_state, x_seq, labels) -> (params, opt_state, loss)`` (Adam)."""
    optax = _optax()
    optimizer = optax.adam(LR)
    loss = loss_fn(model, variant, kernel_backend)

    def step(params, opt_state, x_seq, labels):
        value, grads = jax.value_and_grad(loss)(params, x_seq, labels)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return optimizer, step


# -- the benchmark ---------------------------------------------------------------------
def available_variants(kernel_backend: str | None, braintools: bool = True) -> list[str]:
    """The variants compiled and timed here: the fused ones only with a kernel backend,
    ``step-pallas`` on a GPU or TPU, ``step-braintools`` where braintools imports (and is
    wanted)."""
    out = []
    if kernel_backend:
        out += list(FUSED)
    out += ["scan", "scan+remat", "scan+bits", "scan+checkpoint", "scan+chunks", "step-auto",
            "step-reference"]
    if on_accelerator():
        out.append("step-pallas")
    if braintools and ew.braintools_surrogate() is not None:
        out.append("step-braintools")
    return out


def kept_per_neuron_step(model, variant, params, x_seq, labels, kernel_backend=None) -> float:
    """Bytes per neuron-step ``jax.vjp`` of the loss keeps beyond its inputs (parameters,
    x_seq, labels): what differentiating the forward adds to memory."""
    return residual_bytes(loss_fn(model, variant, kernel_backend), params, x_seq, labels,
                          exclude_inputs=True, per=neuron_steps(model))


def kept_per_layer(model, variant, params, x_seq, kernel_backend=None) -> list[float] | None:
    """Bytes per neuron-step of the whole model that each entry of ``model.blocks`` keeps
    (``spikefuse.memory.residual_bytes_per_layer`` over `chain`); None for the single-step
    forms and ``+chunks``, whose layers share one time loop."""
    if not variant.startswith(("fused", "scan")) or variant.endswith("+chunks"):
        return None
    neuron = _lif("reference" if variant.startswith("scan") else kernel_backend or "interpret")
    return mem.residual_bytes_per_layer(chain(model, neuron, variant.partition("+")[2]),
                                        params, x_seq, per=neuron_steps(model))


BUDGETS_GIB = (24, 80)  # the devices the largest batch is extrapolated for


def _step_job(model: Model, variant: str, kernel_backend, params, batch: int):
    """``(step, avals)`` of the training step of ``model`` at ``batch`` (for `compile_all`)."""
    optimizer, step = train_step_fn(model, variant, kernel_backend)
    avals = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                         (params, optimizer.init(params)))
    return step, (*avals, jax.ShapeDtypeStruct((model.T, batch, *model.in_shape), jnp.float32),
                  jax.ShapeDtypeStruct((batch,), jnp.int32))


def largest_batch(points, budgets_gib=BUDGETS_GIB) -> dict:
    """The largest batch whose compiled step fits each budget, extrapolated on the line
    through two ``(batch, total bytes)`` points (the bytes a step needs grow linearly with
    the batch: activations and residuals; parameters and optimizer state do not).

    Returns ``{"per_sample": bytes, "fixed": bytes, "24 GiB": batch, ...}``; a batch is None
    where the line does not grow or the fixed part alone exceeds the budget."""
    (b1, m1), (b2, m2) = sorted(points)
    slope = (m2 - m1) / (b2 - b1) if b2 != b1 else 0.0
    fixed = m1 - slope * b1
    out: dict = dict(per_sample=slope, fixed=fixed)
    for g in budgets_gib:
        n = math.floor((g * 2**30 - fixed) / slope) if slope > 0 else None
        out[f"{g} GiB"] = n if n is not None and n > 0 else None
    return out


def run(model_list, kernel_backend, *, samples: int, min_sample_s: float, threads: int = 1,
        braintools: bool = True, progress=None, meta=None, capacity: bool = True) -> list[dict]:
    """One row per model x variant: timing and memory where the variant compiles here, the
    residual count everywhere. A model's variants are timed in turns (`time_interleaved`),
    so their ratios survive a change of load. Their first calls run in increasing order
    of XLA's memory estimate, so the device peak (cumulative in a process) rises with each;
    where it did not, ``peak_bytes`` is None.

    With ``capacity``, every variant is also compiled at twice the batch, and its row gets
    the largest batch that fits 24 and 80 GiB (`largest_batch`), labelled with the platform
    it was compiled for. The fused variants without a kernel backend are compiled with the
    kernels interpreted for that account (``compiled_with="interpret"``), not run."""
    meta = meta or {}
    timed = available_variants(kernel_backend, braintools)
    counted = [v for v in FUSED if v not in timed] if capacity else []
    rows = []
    for model in model_list:
        x_seq, labels = inputs(model)
        params = init_params(model, 0, x_seq)
        batches = (model.batch, 2 * model.batch) if capacity else (model.batch,)
        backend_of = {v: kernel_backend if v in timed else "interpret" for v in timed + counted}
        jobs = {(v, b): _step_job(model, v, backend_of[v], params, b)
                for v in timed + counted for b in batches}
        compiled = compile_all(jobs, threads)
        memory = {v: compiled_memory(compiled[v, model.batch]) for v in timed + counted}
        opt_states = {v: train_step_fn(model, v, kernel_backend)[0].init(params) for v in timed}
        order = sorted(timed, key=lambda v: memory[v].get("total", 0))
        peaks: dict = {}
        last = [device_peak_bytes()]

        def record_peak(variant, peaks=peaks, last=last):  # after the variant's first call:
            now = device_peak_bytes()  # did the peak rise?
            rose = now is not None and (last[0] is None or now > last[0])
            peaks[variant], last[0] = (now if rose else None), now

        times = time_interleaved(
            {v: (compiled[v, model.batch], (params, opt_states[v], x_seq, labels))
             for v in order}, samples=samples, min_sample_s=min_sample_s, on_first=record_peak)
        model_rows = {}
        for variant in order:
            sec, lo, hi = times[variant]
            row = _row(model, variant, meta, kernel_backend, params, x_seq, labels)
            row.update(ms=sec * 1e3, ms_min=lo * 1e3, ms_max=hi * 1e3,
                       samples_per_s=model.batch / sec, memory=memory[variant],
                       peak_bytes=peaks[variant])
            model_rows[variant] = row
            if progress:
                progress(row)
        for variant in FUSED:  # not run here: the residual count, and XLA's account
            if variant not in model_rows:
                row = model_rows[variant] = _row(model, variant, meta, kernel_backend, params,
                                                 x_seq, labels)
                if variant in counted:
                    row.update(memory=memory[variant], compiled_with="interpret")
        if capacity:
            for v in timed + counted:
                mems = [compiled_memory(compiled[v, b]) for b in batches]
                if all(m.get("total") for m in mems):
                    model_rows[v].update(
                        memory_by_batch={str(b): m for b, m in zip(batches, mems)},
                        fits=largest_batch([(b, m["total"]) for b, m in zip(batches, mems)]),
                        compiled_for=jax.default_backend())
        group = [model_rows[v] for v in VARIANTS if v in model_rows]
        add_ratios(group)
        rows += group
        del compiled, params, x_seq, labels
    return rows


def _row(model, variant, meta, kernel_backend, params, x_seq, labels) -> dict:
    fused = variant.startswith("fused")
    kb = kernel_backend if fused else None
    return dict(meta, suite="models", model=model.name, variant=variant, T=model.T,
                batch=model.batch, in_shape=list(model.in_shape),
                blocks=[list(b) for b in model.blocks], neuron_steps=neuron_steps(model),
                backend=kb, step_unroll=step_unroll() if variant.startswith("step") else None,
                residual_bytes_per_step=kept_per_neuron_step(
                    model, variant, params, x_seq, labels, kb),
                residual_bytes_per_layer=kept_per_layer(model, variant, params, x_seq, kb))


def add_ratios(group: list[dict]) -> None:
    """Within one model: each timed row's speed-up over the best of the ``scan`` and
    ``step-*`` rows (the issue's (b) and (c)), and its memory relative to that row's; the
    ``step-auto`` row also gets its speed against ``step-reference``."""
    base = [r for r in group if "ms" in r and not r["variant"].startswith("fused")
            and "+" not in r["variant"]]
    if not base:
        return
    best = min(base, key=lambda r: r["ms"])
    for r in group:
        if "ms" not in r:
            continue
        r["best_baseline"] = best["variant"]
        r["speedup_vs_best_baseline"] = best["ms"] / r["ms"]
        if r["memory"].get("total") and best["memory"].get("total"):
            r["memory_vs_best_baseline"] = r["memory"]["total"] / best["memory"]["total"]
    ref = next((r for r in group if r["variant"] == "step-reference" and "ms" in r), None)
    for r in group:
        if r["variant"] == "step-auto" and ref and "ms" in r:
            r["auto_vs_reference"] = ref["ms"] / r["ms"]


GPU_SIZE_VARIANTS = ("scan", "scan+remat", "scan+checkpoint", "fused+checkpoint",
                     "scan+chunks", "fused+chunks")
# Compiled for a GPU without one (`aot`): the fused kernels compile there, so every fused
# variant has its account too.
DEVICELESS_VARIANTS = ("scan", "scan+remat", "scan+bits", "scan+checkpoint", "scan+chunks",
                       "fused", "fused+remat", "fused+bits", "fused+checkpoint", "fused+chunks")


def gpu_size_memory(names, kernel_backend, *, variants=None, threads: int = 1,
                    target: str | None = None) -> list[dict]:
    """XLA's account of the training step at the GPU sizes (`MODELS`), compiled here and
    not run, at half and the whole GPU batch: per model and variant, the temporaries and
    total at both batches and the largest batch that fits (`largest_batch`).

    ``target=None``: compiled for this machine's platform (`GPU_SIZE_VARIANTS`), the fused
    variants with the kernel backend, or without one the kernels interpreted. ``target="h200"``:
    compiled for an NVIDIA H200 without one (`spikefuse.benchmark.aot`; XLA:GPU's account,
    the fused kernels compiled by Triton; `DEVICELESS_VARIANTS`)."""
    if target is not None:
        reason = aot.unavailable_reason(target)
        if reason:
            raise RuntimeError(reason)
    variants = variants or (GPU_SIZE_VARIANTS if target is None else DEVICELESS_VARIANTS)
    jobs, rows = {}, []
    for name in names:
        model = MODELS[name]
        params = init_params(model)
        batches = (model.batch // 2, model.batch)
        for v in variants:
            kb = None
            if v.startswith("fused"):
                kb = "pallas" if target else kernel_backend or "interpret"
            rows.append(dict(model=name, variant=v, T=model.T, batch=model.batch,
                             batches=list(batches), compiled_with=kb,
                             compiled_for=f"{target} (deviceless)" if target
                             else jax.default_backend()))
            for b in batches:
                jobs[name, v, b] = _step_job(model, v, kb, params, b)
    compiled = compile_all(jobs, threads, lower=functools.partial(aot.lower, target=target)
                           if target else None)
    for r in rows:
        mems = [compiled_memory(compiled[r["model"], r["variant"], b]) for b in r["batches"]]
        r["memory_by_batch"] = {str(b): m for b, m in zip(r["batches"], mems)}
        if all(m.get("total") for m in mems):
            r["fits"] = largest_batch([(b, m["total"]) for b, m in zip(r["batches"], mems)])
    for name in names:
        group = {r["variant"]: r for r in rows if r["model"] == name}
        base = group.get("scan", {}).get("memory_by_batch", {}).get(str(MODELS[name].batch))
        for r in group.values():
            mine = r["memory_by_batch"].get(str(MODELS[name].batch), {})
            if base and base.get("temp") and "temp" in mine:
                r["temp_vs_scan"] = mine["temp"] / base["temp"]
    return rows


TARGETS = dict(checkpoint_bytes=1.0, bits_vs_fused=0.6, checkpoint_temp_vs_scan=0.35,
               checkpoint_time_vs_scan=1.5, bits_time_vs_scan=1.1)


def targets(rows: list[dict], gpu_rows: list[dict] | None = None) -> list[dict]:
    """Issue 16's targets, read from the rows: one dict per check (``what``, ``model``,
    ``value``, ``bar``, ``met``, ``note``). The ``+checkpoint`` bars (kept bytes, time,
    temporaries at the GPU sizes) are checked for ``+chunks`` too."""
    out = []

    def add(what, model, value, bar, note=""):
        if value is not None:
            out.append(dict(what=what, model=model, value=value, bar=bar, met=value <= bar,
                            note=note))

    for name in ("mlp", "conv"):
        group = {r["variant"]: r for r in rows if r["model"] == name}
        if not group:
            continue
        bits, fused = group.get("fused+bits", {}), group.get("fused", {})
        for v in ("fused+checkpoint", "fused+chunks"):  # +chunks: the same bars, for the peak
            add(f"{v}: kept B per neuron-step", name,
                group.get(v, {}).get("residual_bytes_per_step"), TARGETS["checkpoint_bytes"])
        if bits and fused:
            add("fused+bits: kept bytes vs fused", name,
                bits["residual_bytes_per_step"] / fused["residual_bytes_per_step"],
                TARGETS["bits_vs_fused"])
        scan = group.get("scan", {})
        for mode, bar in (("checkpoint", "checkpoint_time_vs_scan"),
                          ("chunks", "checkpoint_time_vs_scan"),
                          ("bits", "bits_time_vs_scan")):
            timed = group.get(f"fused+{mode}", {})
            note = ""
            if "ms" not in timed or timed.get("backend") != "pallas":
                timed, note = group.get(f"scan+{mode}", {}), (
                    f"scan+{mode}: the fused kernels do not run here; the same memory "
                    "mode with the reference neuron")
            if "ms" in timed and "ms" in scan:
                add(f"{timed['variant']}: time vs scan", name, timed["ms"] / scan["ms"],
                    TARGETS[bar], note)
    if not gpu_rows:  # rows at the GPU sizes (a run without --quick) count as well
        gpu_rows = []
        for name in ("mlp", "conv"):
            group = {r["variant"]: r for r in rows if r["model"] == name
                     and (r["T"], r["batch"]) == (MODELS[name].T, MODELS[name].batch)}
            base = group.get("scan", {}).get("memory", {}).get("temp")
            for v in GPU_SIZE_VARIANTS:
                temp = group.get(v, {}).get("memory", {}).get("temp")
                if base and temp is not None:
                    gpu_rows.append(dict(group[v], temp_vs_scan=temp / base))
    for r in gpu_rows:
        if r["variant"].endswith(("+checkpoint", "+chunks")) and "temp_vs_scan" in r:
            how = f"compiled for {r.get('compiled_for', jax.default_backend())}" + (
                f", kernels {r['compiled_with']}" if r.get("compiled_with") else "")
            add(f"{r['variant']} at GPU sizes: compiled temporaries vs scan", r["model"],
                r["temp_vs_scan"], TARGETS["checkpoint_temp_vs_scan"],
                f"T={r['T']}, batch {r['batch']}, {how}; not run")
    return out


def memory_sweep(model: Model, Ts, kernel_backend, *,
                 variants=("fused", "scan", "step-reference"), threads: int = 1) -> list[dict]:
    """Memory vs T for ``model`` (one LIF layer: ``long``): per T and variant, the residual
    bytes kept for the backward (traced: every variant) and XLA's account of the compiled
    training step (variants that compile here: the fused ones only with a kernel backend).

    The ``+remat`` variants are left out by default: with one layer, what they do not keep
    between forward and backward is rebuilt during the backward, so the step's peak does not
    fall; remat pays across layers (the model rows show it)."""
    rows, jobs = [], {}
    for T in Ts:
        m = model.with_T(T)
        params = init_params(m)
        x_seq, labels = (jax.ShapeDtypeStruct((T, m.batch, *m.in_shape), jnp.float32),
                         jax.ShapeDtypeStruct((m.batch,), jnp.int32))
        for v in variants:
            fused = v.startswith("fused")
            rows.append(dict(model=m.name, T=T, batch=m.batch, variant=v,
                             neuron_steps=neuron_steps(m),
                             residual_bytes=residual_bytes(
                                 loss_fn(m, v, kernel_backend if fused else None), params,
                                 x_seq, labels, exclude_inputs=True)))
            if fused and not kernel_backend:
                continue
            optimizer, step = train_step_fn(m, v, kernel_backend)
            avals = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                 (params, optimizer.init(params)))
            jobs[(T, v)] = (step, (*avals, x_seq, labels))
    compiled = compile_all(jobs, threads)
    for r in rows:
        c = compiled.get((r["T"], r["variant"]))
        r["memory"] = compiled_memory(c) if c is not None else {}
    return rows


# -- output ----------------------------------------------------------------------------
def _mib(b) -> str:
    return f"{b / 2**20:8.1f}" if b else "       -"


def _fits(r) -> str:
    fits = r.get("fits")
    if not fits:
        return f"{'-':>13}"
    return "/".join(f"{fits[f'{g} GiB']:>6}" if fits[f"{g} GiB"] else f"{'-':>6}"
                    for g in BUDGETS_GIB)


def format_table(rows: list[dict], sweep: list[dict] | None = None,
                 gpu_rows: list[dict] | None = None, checks: list[dict] | None = None) -> str:
    """The models table (one block per model), the memory sweep, the GPU-size memory and
    the targets."""
    lines = []
    platform = next((r["compiled_for"] for r in rows + (gpu_rows or []) if "compiled_for" in r
                     and "deviceless" not in r["compiled_for"]), jax.default_backend())
    for name in dict.fromkeys(r["model"] for r in rows):
        group = [r for r in rows if r["model"] == name]
        g = group[0]
        lines.append(f"\n## model {name}: T={g['T']}, batch {g['batch']}, input "
                     f"{'x'.join(map(str, g['in_shape']))}, blocks "
                     + " ".join(str(b[1]) if b[0] in ("dense", "conv", "readout") else b[0]
                                for b in g["blocks"])
                     + f" ({g['neuron_steps']:,} neuron-steps per training step)")
        lines.append(f"{'variant':<16} {'ms/step':>9} {'min..max':>19} {'samples/s':>10} "
                     f"{'x best':>7} {'XLA MiB':>8} {'temp MiB':>8} {'mem x':>6} "
                     f"{'peak MiB':>8} {'resid B/n-step':>14} {'batch fits 24/80 GiB':>21}")
        for r in group:
            mem = r.get("memory", {})
            if "ms" in r:
                t = (f"{r['ms']:9.3f} {r['ms_min']:9.3f}..{r['ms_max']:<8.3f} "
                     f"{r['samples_per_s']:10.1f} {r.get('speedup_vs_best_baseline', 0):7.2f}")
                m = (f"{_mib(mem.get('total'))} {_mib(mem.get('temp'))} "
                     + (f"{r['memory_vs_best_baseline']:6.2f}" if "memory_vs_best_baseline"
                        in r else "     -") + f" {_mib(r.get('peak_bytes'))}")
            else:
                t = f"{'not run: needs a GPU (or --backends interpret)':<48}"
                m = (f"{_mib(mem.get('total'))} {_mib(mem.get('temp'))} {'i':>6} {'':>8}"
                     if mem else f"{'':>33}")
            lines.append(f"{r['variant']:<16} {t} {m} {r['residual_bytes_per_step']:14.2f} "
                         f"{_fits(r):>21}")
        auto = next((r for r in group if "auto_vs_reference" in r), None)
        if auto:
            lines.append(f"# step-auto vs step-reference: {auto['auto_vs_reference']:.2f}x")
        if any(r.get("compiled_with") == "interpret" for r in group):
            lines.append("# i: compiled with the kernels interpreted (XLA:CPU), not run: XLA's "
                         "account of that program, not of the GPU kernels")
    if any("fits" in r for r in rows):
        lines.append(f"# batch fits: the largest batch whose compiled step fits 24 / 80 GiB, "
                     f"extrapolated from XLA's account at two batch sizes, compiled for "
                     f"{platform}")
    if sweep:
        lines.append("\n## memory vs T, one LIF layer (model long): MiB kept for the backward "
                     "(vjp residuals) / XLA's account of the compiled training step")
        variants = list(dict.fromkeys(r["variant"] for r in sweep))
        lines.append(f"{'T':>6} " + " ".join(f"{v:>22}" for v in variants))
        for T in dict.fromkeys(r["T"] for r in sweep):
            cells = []
            for v in variants:
                r = next(r for r in sweep if r["T"] == T and r["variant"] == v)
                total = r["memory"].get("total")
                cells.append(f"{r['residual_bytes'] / 2**20:9.1f} / "
                             + (f"{total / 2**20:9.1f}" if total else f"{'-':>9}"))
            lines.append(f"{T:>6} " + " ".join(f"{c:>22}" for c in cells))
    for target in dict.fromkeys(r.get("compiled_for", platform) for r in gpu_rows or []):
        lines.append(f"\n## the training step at the GPU sizes, compiled for {target} and "
                     "not run: XLA's account (MiB) at half and the whole batch")
        lines.append(f"{'model':<6} {'variant':<18} {'kernels':<10} {'temp b/2':>9} "
                     f"{'temp b':>9} {'total b':>9} {'temp x scan':>11} "
                     f"{'batch fits 24/80 GiB':>21}")
        for r in (r for r in gpu_rows or [] if r.get("compiled_for", platform) == target):
            mems = [r["memory_by_batch"][str(b)] for b in r["batches"]]
            lines.append(f"{r['model']:<6} {r['variant']:<18} {r.get('compiled_with') or '-':<10} "
                         f"{_mib(mems[0].get('temp')):>9} {_mib(mems[1].get('temp')):>9} "
                         f"{_mib(mems[1].get('total')):>9} "
                         + (f"{r['temp_vs_scan']:11.2f}" if "temp_vs_scan" in r else f"{'-':>11}")
                         + f" {_fits(r):>21}")
    if checks:
        lines.append("\n## targets (issue 16)")
        for c in checks:
            lines.append(f"{'met ' if c['met'] else 'MISSED'} {c['model']:<5} {c['what']}: "
                         f"{c['value']:.3g} (target <= {c['bar']:g})"
                         + (f"  [{c['note']}]" if c["note"] else ""))
    return "\n".join(lines)


def plot_memory(sweep: list[dict], path: str, meta: dict) -> str:
    """Memory vs T: residual bytes (dashed) and the compiled step's total (solid)."""
    import os

    from spikefuse.plot import _matplotlib

    Figure, Canvas = _matplotlib()
    fig = Figure(figsize=(8, 5), dpi=100, layout="constrained")
    ax = fig.subplots()
    variants = list(dict.fromkeys(r["variant"] for r in sweep))
    for i, v in enumerate(variants):
        rs = [r for r in sweep if r["variant"] == v]
        Ts = [r["T"] for r in rs]
        comp = [(r["T"], r["memory"]["total"] / 2**20) for r in rs if r["memory"].get("total")]
        ax.plot(Ts, [r["residual_bytes"] / 2**20 for r in rs], color=f"C{i}", linestyle="--",
                marker="o", markersize=3, label=f"{v}: kept for backward"
                + ("" if comp else " (traced; not compiled on this device)"))
        if comp:
            ax.plot(*zip(*comp), color=f"C{i}", marker="s", markersize=3,
                    label=f"{v}: compiled step (XLA)")
    r0 = sweep[0]
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("T (time steps)")
    ax.set_ylabel("MiB")
    ax.set_title(f"training memory vs T: one LIF layer, batch {r0['batch']}, "
                 f"{r0['neuron_steps'] // (r0['T'] * r0['batch']):,} neurons\n"
                 f"{meta.get('device', '?')} | jax {meta.get('jax', '?')} | {meta.get('date', '')}"
                 f" | commit {meta.get('commit', '?')}", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Canvas(fig)
    fig.savefig(path)
    return path


def plot_memory_vs_batch(rows: list[dict], gpu_rows: list[dict] | None, path: str,
                         meta: dict) -> str:
    """XLA's account of the compiled training step against the batch, one panel per model
    (and per model at the GPU sizes): the two compiled points of every variant and their
    line extrapolated to the largest batch that fits 80 GiB; the 24 and 80 GiB budgets."""
    import os

    from spikefuse.plot import _matplotlib

    Figure, Canvas = _matplotlib()
    panels = []
    for name in dict.fromkeys(r["model"] for r in rows):
        group = [r for r in rows if r["model"] == name and "fits" in r]
        if group:
            g = group[0]
            panels.append((f"{name}, T={g['T']} (this run's sizes)", group))
    for name in dict.fromkeys(r["model"] for r in gpu_rows or []):
        group = [r for r in gpu_rows or [] if r["model"] == name and "fits" in r]
        if group:
            panels.append((f"{name}, T={group[0]['T']} (GPU sizes, compiled, not run)", group))
    if not panels:
        raise ValueError("nothing to plot: no variant was compiled at two batch sizes")
    fig = Figure(figsize=(7 * min(len(panels), 2), 4.8 * math.ceil(len(panels) / 2)), dpi=100,
                 layout="constrained")
    axes = list(fig.subplots(math.ceil(len(panels) / 2), min(len(panels), 2),
                             squeeze=False).flat)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, (title, group) in zip(axes, panels):
        low = min(int(b) for r in group for b in r["memory_by_batch"])
        for i, r in enumerate(group):
            pts = sorted((int(b), m["total"]) for b, m in r["memory_by_batch"].items())
            fit = r["fits"]
            end = fit.get(f"{BUDGETS_GIB[-1]} GiB") or pts[-1][0]
            xs = np.geomspace(pts[0][0], max(end, pts[-1][0]), 64)
            style = dict(color=f"C{i % 10}", linestyle="-" if i < 10 else "--")
            ax.plot(xs, (fit["fixed"] + fit["per_sample"] * xs) / 2**30, linewidth=1,
                    label=r["variant"] + (" (kernels interpreted)" if r.get("compiled_with")
                                          == "interpret" else ""), **style)
            ax.plot(*zip(*[(b, m / 2**30) for b, m in pts]), marker="o", markersize=4,
                    linestyle="none", color=style["color"])
        for gib in BUDGETS_GIB:
            ax.axhline(gib, color="0.5", linestyle=":", linewidth=1)
            ax.text(low, gib, f" {gib} GiB", fontsize=7, va="bottom", color="0.4")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel("batch")
        ax.set_ylabel("GiB (XLA's account of the compiled step)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    fig.suptitle(f"training memory vs batch: dots compiled, lines extrapolated; compiled for "
                 f"{meta.get('platform', '?')} | jax {meta.get('jax', '?')} | "
                 f"{meta.get('date', '')} | commit {meta.get('commit', '?')}", fontsize=9)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Canvas(fig)
    fig.savefig(path)
    return path
