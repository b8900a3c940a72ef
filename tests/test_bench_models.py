"""The model benchmark (``spikefuse.benchmark.models``, ``bench --models``).

A benchmark of a wrong model is worthless, so the variants a user could write — fused
multi-step neurons (interpreted kernels here), the ``lax.scan`` reference, the single-step
form with a surrogate call per step, with and without ``jax.checkpoint`` — must compute
the same loss and gradients on tiny models whose every layer fires. Then what each keeps
for the backward, and the CLI. optax is a declared test dependency.
"""

import contextlib
import functools
import io
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spikefuse import __main__ as cli
from spikefuse.benchmark import elementwise as ew
from spikefuse.benchmark import models as bm
from spikefuse.benchmark.memory import vjp_residuals

TINY = {
    "mlp": bm.Model("mlp", 5, 4, (20,), (("dense", 16), ("dense", 8), ("readout", 3))),
    "conv": bm.Model("conv", 3, 2, (8, 8, 2), (("conv", 4), ("conv", 4), ("pool",), ("conv", 8),
                                                ("pool",), ("flatten",), ("readout", 3))),
    "long": bm.Model("long", 12, 2, (6,), (("dense", 16), ("readout", 3))),
}
# Every model in three forms; the remat, "auto" and braintools forms on the MLP only (each
# compile costs CI time, and they share the code paths the other models check); the bits and
# checkpoint forms on the conv net, whose pools move into the next block there; the chunks
# form on both (the conv net's pools and flatten run inside the chunk).
CHECKS = [(m, v) for m in TINY for v in ("fused", "step-reference")] + [
    ("mlp", v) for v in ("fused+remat", "scan+remat", "step-auto", "step-braintools",
                         "scan+bits", "fused+chunks")] + [
    ("conv", "fused+bits"), ("conv", "fused+checkpoint"), ("conv", "scan+chunks")]


@functools.lru_cache(maxsize=None)
def _setup(name):
    model = TINY[name]
    x, labels = bm.inputs(model, seed=1)
    return model, bm.init_params(model, 1, x), x, labels


@pytest.fixture(scope="module")
def reference_runs():
    """Loss and gradients of the ``scan`` variant (LIF on the reference backend)."""
    out = {}
    for name in TINY:
        model, params, x, labels = _setup(name)
        out[name] = jax.jit(jax.value_and_grad(bm.loss_fn(model, "scan")))(params, x, labels)
    return out


@pytest.mark.parametrize("name", list(TINY))
def test_every_layer_fires(name):
    model, params, x, _ = _setup(name)
    rates = bm.firing_rates(model, params, x)
    assert len(rates) == len(bm.neuron_shapes(model))
    assert all(0.01 < r < 0.5 for r in rates), rates


@pytest.mark.parametrize("name,variant", CHECKS)
def test_variants_compute_the_same_loss_and_gradients(reference_runs, name, variant):
    if variant == "step-braintools" and ew.braintools_surrogate() is None:
        pytest.skip("braintools is not installed (Python >= 3.12)")
    model, params, x, labels = _setup(name)
    loss, grads = jax.jit(jax.value_and_grad(bm.loss_fn(model, variant, "interpret")))(
        params, x, labels)
    ref_loss, ref_grads = reference_runs[name]
    assert abs(float(ref_loss) - math.log(model.blocks[-1][1])) > 1e-3  # the readout sees spikes
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        assert float(jnp.max(jnp.abs(r))) > 0  # every layer gets a gradient
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4,
                                   atol=1e-6 * float(jnp.max(jnp.abs(r))))


def _per_step_arrays(name, variant):
    """The residuals with leading (time, batch) axes, as (shape, bytes), beyond the inputs."""
    model, params, x, labels = _setup(name)
    res = vjp_residuals(bm.loss_fn(model, variant, "interpret"), params, x, labels)
    return sorted((r.shape, r.nbytes) for r in res
                  if not r.is_input and r.shape[:2] == (model.T, model.batch))


def test_remat_keeps_only_the_spikes_between_layers():
    """jax.checkpoint around each (Linear -> LIF) block: per step, the backward keeps just
    layer 1's spikes (layer 2's input, which it needs anyway), in f32."""
    m = TINY["mlp"]
    (n1,), (n2,) = bm.neuron_shapes(m)
    for variant in ("fused+remat", "scan+remat"):
        assert _per_step_arrays("mlp", variant) == [((m.T, m.batch, n1), 4 * m.T * m.batch * n1)]
    # Without remat the fused layers also keep their input x (4 B per neuron-step) and
    # at most 4/K B of checkpoints (none here: T is one chunk); the reference 8 B.
    fused = sum(b for _, b in _per_step_arrays("mlp", "fused"))
    scan = sum(b for _, b in _per_step_arrays("mlp", "scan"))
    spikes1 = 4 * m.T * m.batch * n1
    assert fused == 4 * m.T * m.batch * (n1 + n2) + spikes1
    assert scan == 8 * m.T * m.batch * (n1 + n2) + spikes1


def test_bits_and_checkpoint_keep_the_spikes_between_layers_as_bits():
    """spikefuse.memory in the model: +bits keeps layer 1's spikes as bits (uint8 words
    along the neurons) instead of float32, and each LIF its input x; +checkpoint keeps the
    bits only. The data (x_seq, an input) is kept as it is, not packed."""
    m = TINY["mlp"]
    (n1,), (n2,) = bm.neuron_shapes(m)
    bits = ((m.T, m.batch, math.ceil(n1 / 8)), m.T * m.batch * math.ceil(n1 / 8))
    x1, x2 = (((m.T, m.batch, n), 4 * m.T * m.batch * n) for n in (n1, n2))
    for neuron in ("fused", "scan"):
        assert _per_step_arrays("mlp", f"{neuron}+checkpoint") == [bits]
    assert _per_step_arrays("mlp", "fused+bits") == sorted([bits, x1, x2])
    model, params, x, labels = _setup("mlp")
    res = vjp_residuals(bm.loss_fn(model, "fused+checkpoint", "interpret"), params, x, labels)
    assert sorted((r.dtype, r.argnum) for r in res if r.shape[:2] == (m.T, m.batch)) == [
        ("float32", 1), ("uint8", None)]  # x_seq itself, argument 1; layer 1's spikes: bits
    # per layer: layer 1 keeps nothing of its input (the data), layer 2 its input as bits
    per_layer = bm.kept_per_layer(model, "fused+checkpoint", params, x)
    steps = bm.neuron_steps(model)
    assert per_layer[0] == 0 and per_layer[1] == pytest.approx(bits[1] / steps)


def test_chunks_keep_the_inputs_only():
    """+chunks: the whole network under one memory.scan keeps the data and the parameters
    (inputs) and, computed, only the readout's input (the firing rates, batch x features):
    no spikes between layers, no membrane — neither per step nor at the chunk starts (the
    LIFs start from zeros built inside). A membrane kept would add batch x neurons x 4 B."""
    assert [bm.chunk_steps(T) for T in (32, 12, 4, 7, 11, 1024)] == [4, 2, 1, 1, 11, 128]
    for name in ("mlp", "conv"):
        model, params, x, labels = _setup(name)
        rates, classes = params[-1]["w"].shape  # the readout's inputs and outputs
        for variant in ("fused+chunks", "scan+chunks"):
            res = vjp_residuals(bm.loss_fn(model, variant, "interpret"), params, x, labels)
            # (the cross-entropy's own: the softmax, batch x classes, and the label index)
            arrays = [r for r in res if not r.is_input and r.dtype == "float32"
                      and len(r.shape) >= 2 and r.shape != (model.batch, classes)]
            assert sum(r.nbytes for r in arrays) == model.batch * rates * 4, (name, arrays)
            assert bm.kept_per_layer(model, variant, params, x) is None  # one time loop


def test_largest_batch_is_the_line_through_two_compiled_points():
    GiB = 2**30
    fit = bm.largest_batch([(64, 1 * GiB + 64 * 3_000_000), (32, 1 * GiB + 32 * 3_000_000)])
    assert fit["per_sample"] == pytest.approx(3e6) and fit["fixed"] == pytest.approx(GiB)
    assert fit["24 GiB"] == (23 * GiB) // 3_000_000
    assert fit["80 GiB"] == (79 * GiB) // 3_000_000
    assert bm.largest_batch([(1, 30 * GiB), (2, 31 * GiB)])["24 GiB"] is None  # never fits
    assert bm.largest_batch([(1, GiB), (2, GiB)])["80 GiB"] is None  # does not grow


def test_targets_read_the_rows():
    rows = [dict(model="mlp", variant=v, T=8, batch=32, residual_bytes_per_step=b, ms=ms,
                 memory=dict(temp=1), backend=None)
            for v, b, ms in (("fused", 6.85, None), ("fused+bits", 4.3, None),
                             ("fused+checkpoint", 0.27, None), ("fused+chunks", 1.2, None),
                             ("scan", 10.85, 2.0), ("scan+bits", 8.3, 2.1),
                             ("scan+checkpoint", 0.27, 3.2), ("scan+chunks", 1.2, 2.8))]
    for r in rows:
        if r["ms"] is None:
            del r["ms"]
    gpu = [dict(model="mlp", variant="fused+checkpoint", T=32, batch=1024, temp_vs_scan=0.3,
                compiled_for="cpu", compiled_with="interpret"),
           dict(model="mlp", variant="scan+chunks", T=32, batch=1024, temp_vs_scan=0.4,
                compiled_for="cpu")]
    got = {(c["what"], c["model"]): c for c in bm.targets(rows, gpu)}
    ckpt = got["fused+checkpoint: kept B per neuron-step", "mlp"]
    assert ckpt["value"] == 0.27 and ckpt["met"]
    bits = got["fused+bits: kept bytes vs fused", "mlp"]
    assert bits["value"] == pytest.approx(4.3 / 6.85) and bits["met"] is False
    # no fused timing here: the same memory modes with the reference neuron, labelled so
    time = got["scan+checkpoint: time vs scan", "mlp"]
    assert time["value"] == pytest.approx(1.6) and not time["met"] and "reference" in time["note"]
    assert got["scan+bits: time vs scan", "mlp"]["value"] == pytest.approx(1.05)
    # +chunks is held to the +checkpoint bars
    assert got["fused+chunks: kept B per neuron-step", "mlp"]["met"] is False
    assert got["scan+chunks: time vs scan", "mlp"]["value"] == pytest.approx(1.4)
    assert got["scan+chunks: time vs scan", "mlp"]["met"]
    temp = got["fused+checkpoint at GPU sizes: compiled temporaries vs scan", "mlp"]
    assert temp["met"] and "compiled for cpu" in temp["note"] and "not run" in temp["note"]
    chunks = got["scan+chunks at GPU sizes: compiled temporaries vs scan", "mlp"]
    assert chunks["value"] == 0.4 and chunks["met"] is False
    assert "## targets" in bm.format_table([], checks=bm.targets(rows, gpu))


def test_gpu_size_memory_and_the_batch_plot(tmp_path, monkeypatch):
    monkeypatch.setitem(bm.MODELS, "mlp", TINY["mlp"])  # the plumbing, at tiny sizes
    variants = ("scan", "scan+checkpoint")  # (the fused ones compile interpreted: slower)
    rows = bm.gpu_size_memory(["mlp"], None, variants=variants)
    assert [r["variant"] for r in rows] == list(variants)
    for r in rows:
        b1, b2 = r["batches"]
        assert (b1, b2) == (TINY["mlp"].batch // 2, TINY["mlp"].batch)
        m1, m2 = (r["memory_by_batch"][str(b)]["total"] for b in (b1, b2))
        assert m2 > m1 > 0
        assert r["fits"]["per_sample"] == pytest.approx((m2 - m1) / (b2 - b1))
        assert r["temp_vs_scan"] > 0 and r["compiled_for"] == jax.default_backend()
    assert next(r for r in rows if r["variant"] == "scan")["temp_vs_scan"] == 1.0
    png = bm.plot_memory_vs_batch([], rows, str(tmp_path / "batch.png"), {"platform": "cpu"})
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "GPU sizes, compiled for" in bm.format_table([], gpu_rows=rows)


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="unknown variant"):
        bm.forward_fn(TINY["mlp"], "fused+magic")


# -- the command line -------------------------------------------------------------------
QUICK_LONG = ["bench", "--models", "long", "--quick", "--memory-T", "64,128", "--repeats", "2",
              "--min-sample-ms", "0", "--no-progress"]


@pytest.fixture(scope="module")
def models_run(tmp_path_factory):
    """One CLI run, its JSON, chart and printed table; the quick ``long`` model shrunk to
    the tiny one (the plumbing is what is tested; README's command runs the real sizes)."""
    out = tmp_path_factory.mktemp("models")
    js, png = out / "models.json", out / "memory.png"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setitem(bm.QUICK_MODELS, "long", TINY["long"])
        assert cli.main(QUICK_LONG + ["--json", str(js), "--plot", str(png)]) == 0
    return json.loads(js.read_text()), png, printed.getvalue()


def test_models_json_rows_have_time_memory_and_residuals(models_run):
    report, _, _ = models_run
    for key in ("device", "jax", "commit", "date", "command"):
        assert report["meta"][key], key
    rows = {r["variant"]: r for r in report["rows"]}
    timed = bm.available_variants(None)
    assert set(rows) == set(timed) | set(bm.FUSED)  # fused: counted, not timed
    for v, r in rows.items():
        assert r["model"] == "long" and r["T"] == TINY["long"].T
        assert math.isfinite(r["residual_bytes_per_step"])
        if v in timed:
            assert 0 < r["ms_min"] <= r["ms"] <= r["ms_max"]
            assert r["samples_per_s"] == pytest.approx(r["batch"] / r["ms"] * 1e3)
            mem = r["memory"]
            assert mem["total"] == mem["temp"] + mem["argument"] + mem["output"] - mem["alias"]
            assert mem["total"] > 0 and r["speedup_vs_best_baseline"] > 0
        else:
            assert "ms" not in r
    # One LIF layer: fused keeps x (4 B per neuron-step) and a little; the reference 8 B.
    assert 4.0 <= rows["fused"]["residual_bytes_per_step"] < 4.5
    assert 8.0 <= rows["scan"]["residual_bytes_per_step"] < 8.5
    assert rows["fused+remat"]["residual_bytes_per_step"] < 0.5
    assert rows["fused+checkpoint"]["residual_bytes_per_step"] < 0.5
    assert rows["scan+checkpoint"]["residual_bytes_per_step"] < 0.5
    best = min((r for r in rows.values() if "ms" in r and r["variant"] in
                ("scan", "step-auto", "step-reference", "step-braintools")),
               key=lambda r: r["ms"])
    assert best["speedup_vs_best_baseline"] == pytest.approx(1.0)
    assert rows["step-auto"]["auto_vs_reference"] == pytest.approx(
        rows["step-reference"]["ms"] / rows["step-auto"]["ms"])


def test_memory_sweep_grows_with_T(models_run):
    report, png, _ = models_run
    sweep = report["sweep"]
    assert {r["T"] for r in sweep} == {64, 128}
    for v in ("fused", "scan", "step-reference"):
        a, b = (next(r for r in sweep if r["variant"] == v and r["T"] == T) for T in (64, 128))
        assert b["residual_bytes"] > 1.9 * a["residual_bytes"] > 0
        if v != "fused":  # compiled here; the fused kernels only with a kernel backend
            assert b["memory"]["total"] > a["memory"]["total"] > 0
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_models_table_printed(models_run):
    _, _, out = models_run
    for text in ("## model long", "ms/step", "samples/s", "XLA MiB", "resid B/n-step",
                 "memory vs T", "needs a GPU", "step-auto vs step-reference"):
        assert text in out, text


@pytest.mark.parametrize("bad", [["--models", "resnet"], ["--models", "mlp", "--size", "2^10"],
                                 ["--models", "mlp", "--suite", "neurons"],
                                 ["--models", "mlp", "--memory-T", "x"]])
def test_bad_model_options_exit_2(bad, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--no-progress"] + bad)
    assert e.value.code == 2
