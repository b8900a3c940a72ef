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
* ``scan``: ``LIF(backend="reference")``: ``lax.scan`` with the library's default unroll;
  ``scan+remat`` the same under ``jax.checkpoint``;
* ``step-auto`` / ``step-reference`` / ``step-pallas`` / ``step-braintools``: the
  single-step form braintools' documentation writes: the time loop outside (a
  ``lax.scan`` over steps, unroll ``STEP_UNROLL``), every layer inside, a surrogate called
  on ``h - 1`` in each step — ``spikefuse.surrogate.Sigmoid`` under that backend, or
  ``braintools.surrogate.Sigmoid`` where braintools is installed. ``step-pallas`` (GPU
  only) is the measurement behind what ``"auto"`` picks for elementwise calls on GPU.

Each row: median ms per step (min..max), samples/s, XLA's memory account of the compiled
step (temporaries + arguments + outputs, ``compiled.memory_analysis()``), the device's
peak bytes where it reports one (GPU), and the bytes ``jax.vjp`` of the loss keeps for
the backward beyond its inputs, per neuron-step (``benchmark.memory``). Variants that
cannot be compiled here (the fused kernels without a GPU) still get that residual count:
it is traced, not run.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

import spikefuse
from spikefuse import surrogate as sf
from spikefuse.benchmark import elementwise as ew
from spikefuse.benchmark.memory import compiled_memory, device_peak_bytes, residual_bytes
from spikefuse.benchmark.timing import compile_all, on_accelerator, time_interleaved
from spikefuse.neurons import LIF

__all__ = ["MODELS", "QUICK_MODELS", "VARIANTS", "Model", "available_variants",
           "format_table", "forward_fn", "init_params", "inputs", "loss_fn", "memory_sweep",
           "neuron_shapes", "neuron_steps", "plot_memory", "run", "train_step_fn"]

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
VARIANTS = ("fused", "fused+remat", "scan", "scan+remat", "step-auto", "step-reference",
            "step-pallas", "step-braintools")


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


def _op(kind, p, h):
    """A dense or 3x3 SAME conv layer on ``h`` with any leading (time, batch) dims."""
    if kind == "dense":
        return h @ p["w"] + p["b"]
    lead = h.shape[:-3]
    out = jax.lax.conv_general_dilated(h.reshape(-1, *h.shape[-3:]), p["w"], (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return (out + p["b"]).reshape(*lead, *out.shape[1:])


def _reshape(kind, h):
    if kind == "pool":  # 2x2 average over the last three dims (H, W, C)
        *lead, H, W, C = h.shape
        return h.reshape(*lead, H // 2, 2, W // 2, 2, C).mean(axis=(-4, -2))
    return h.reshape(*h.shape[:-3], -1)  # flatten H, W, C


def _readout(p, spikes_seq):
    return spikes_seq.mean(axis=0) @ p["w"] + p["b"]


def multistep_forward(model, params, x_seq, neuron, remat: bool):
    """Layer by layer over the whole sequence: each op on [T, batch, ...] at once, then
    ``neuron`` (a multi-step LIF) over T."""
    h = x_seq
    for (kind, *_), p in zip(model.blocks, params):
        if kind in ("dense", "conv"):
            def block(p, h, kind=kind):
                return neuron(_op(kind, p, h))[0]

            h = (jax.checkpoint(block) if remat else block)(p, h)
        elif kind == "readout":
            return _readout(p, h)
        else:
            h = _reshape(kind, h)
    raise ValueError(f"model {model.name} has no readout")


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

    multistep_forward(model, params, x_seq, recording, remat=False)
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
        remat = variant.endswith("+remat")
        return lambda params, x: multistep_forward(model, params, x, neuron, remat)
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
        out += ["fused", "fused+remat"]
    out += ["scan", "scan+remat", "step-auto", "step-reference"]
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


def run(model_list, kernel_backend, *, samples: int, min_sample_s: float, threads: int = 1,
        braintools: bool = True, progress=None, meta=None) -> list[dict]:
    """One row per model x variant: timing and memory where the variant compiles here, the
    residual count everywhere. A model's variants are timed in turns (`time_interleaved`),
    so their ratios survive a change of load. Their first calls run in increasing order
    of XLA's memory estimate, so the device peak (cumulative in a process) rises with each;
    where it did not, ``peak_bytes`` is None."""
    meta = meta or {}
    timed = available_variants(kernel_backend, braintools)
    rows = []
    for model in model_list:
        x_seq, labels = inputs(model)
        params = init_params(model, 0, x_seq)
        jobs, opt_states = {}, {}
        for variant in timed:
            optimizer, step = train_step_fn(model, variant, kernel_backend)
            opt_state = opt_states[variant] = optimizer.init(params)
            avals = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                 (params, opt_state, x_seq, labels))
            jobs[variant] = (step, avals)
        compiled = compile_all(jobs, threads)
        memory = {v: compiled_memory(c) for v, c in compiled.items()}
        order = sorted(timed, key=lambda v: memory[v].get("total", 0))
        peaks: dict = {}
        last = [device_peak_bytes()]

        def record_peak(variant, peaks=peaks, last=last):  # after the variant's first call:
            now = device_peak_bytes()  # did the peak rise?
            rose = now is not None and (last[0] is None or now > last[0])
            peaks[variant], last[0] = (now if rose else None), now

        times = time_interleaved(
            {v: (compiled[v], (params, opt_states[v], x_seq, labels)) for v in order},
            samples=samples, min_sample_s=min_sample_s, on_first=record_peak)
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
        for variant in VARIANTS:  # not compiled here: the residual count only
            if variant not in model_rows and variant in ("fused", "fused+remat"):
                model_rows[variant] = _row(model, variant, meta, kernel_backend, params,
                                           x_seq, labels)
        group = [model_rows[v] for v in VARIANTS if v in model_rows]
        add_ratios(group)
        rows += group
        del compiled, params, x_seq, labels
    return rows


def _row(model, variant, meta, kernel_backend, params, x_seq, labels) -> dict:
    fused = variant.startswith("fused")
    return dict(meta, suite="models", model=model.name, variant=variant, T=model.T,
                batch=model.batch, in_shape=list(model.in_shape),
                blocks=[list(b) for b in model.blocks], neuron_steps=neuron_steps(model),
                backend=(kernel_backend if fused else None),
                step_unroll=step_unroll() if variant.startswith("step") else None,
                residual_bytes_per_step=kept_per_neuron_step(
                    model, variant, params, x_seq, labels, kernel_backend if fused else None))


def add_ratios(group: list[dict]) -> None:
    """Within one model: each timed row's speed-up over the best of the ``scan`` and
    ``step-*`` rows (the issue's (b) and (c)), and its memory relative to that row's; the
    ``step-auto`` row also gets its speed against ``step-reference``."""
    base = [r for r in group if "ms" in r and not r["variant"].startswith("fused")
            and not r["variant"].endswith("+remat")]
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


def format_table(rows: list[dict], sweep: list[dict] | None = None) -> str:
    """The models table (one block per model) and the memory sweep."""
    lines = []
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
                     f"{'peak MiB':>8} {'resid B/n-step':>14}")
        for r in group:
            if "ms" in r:
                t = (f"{r['ms']:9.3f} {r['ms_min']:9.3f}..{r['ms_max']:<8.3f} "
                     f"{r['samples_per_s']:10.1f} {r.get('speedup_vs_best_baseline', 0):7.2f}")
                mem = r["memory"]
                m = (f"{_mib(mem.get('total'))} {_mib(mem.get('temp'))} "
                     + (f"{r['memory_vs_best_baseline']:6.2f}" if "memory_vs_best_baseline"
                        in r else "     -") + f" {_mib(r.get('peak_bytes'))}")
            else:
                t = f"{'needs a GPU (or --backends interpret)':<48}"
                m = f"{'':>33}"
            lines.append(f"{r['variant']:<16} {t} {m} {r['residual_bytes_per_step']:14.2f}")
        auto = next((r for r in group if "auto_vs_reference" in r), None)
        if auto:
            lines.append(f"# step-auto vs step-reference: {auto['auto_vs_reference']:.2f}x")
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
