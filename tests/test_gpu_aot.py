"""The GPU kernels compiled for an NVIDIA H200 on a machine without one.

``tests/lowering.py`` exports the kernels for ``cuda``: that stops at StableHLO, with each
kernel's IR inside. Here XLA:GPU compiles them ahead of time for an H200
(``spikefuse.benchmark.aot``: deviceless, from the device's description): its whole pipeline,
fusion, scheduling, buffer assignment, with the Triton kernels compiled for sm_90 and the
Mosaic GPU kernels embedded — every surrogate's elementwise spike and every neuron, forward
and backward, in both GPU kernel families, and the benchmark's training step. What only a
GPU can say (values, speed) stays with ``tests/test_gpu*.py`` on ``bench/gpu_run.sh``.

Needs jax's CUDA plugin (``pip install "jax[cuda12]"``); skipped without it. ``.ci/run`` runs
this file in a virtual environment that has it (the "cuda" step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import spikefuse
import spikefuse.neurons as sn
from spikefuse import surrogate as sg
from spikefuse.benchmark import aot
from spikefuse.benchmark import models as md
from spikefuse.benchmark.memory import compiled_memory
from spikefuse.benchmark.neurons import example_step
from spikefuse.surrogate.registry import SHAPES

REASON = aot.unavailable_reason("h200")
needs_plugin = pytest.mark.skipif(REASON is not None, reason=REASON or "")
TRITON = 'custom_call_target="__gpu$xla.gpu.triton"'
MOSAIC = "mosaic_gpu"
KERNEL = {"pallas_triton": TRITON, "pallas_mgpu": MOSAIC}
NEURONS = {
    "if-soft": lambda x, b: sn.integrate_fire(x, v_reset=None, surrogate=sg.Arctan(), backend=b),
    "lif-hard": lambda x, b: sn.lif(x, tau=1.7, backend=b),
    "plif": lambda x, b: sn.plif(x, w=jnp.linspace(-1, 1, x.shape[-1]), backend=b),
    "alif": lambda x, b: sn.alif(x, tau=2.0, tau_a=8.0, beta=0.7, backend=b),
    "adex": lambda x, b: sn.multistep(example_step("adex", "adex_step"), x * 30.0 - 20.0,
                                      (-70.0, 0.0), surrogate=sg.GaussianGrad(sigma=0.5),
                                      backend=b),
}


def compiled_text(fn, *avals):
    compiled = aot.lower(fn, avals).compile()
    assert compiled_memory(compiled).get("total"), "XLA:GPU gave no memory account"
    return compiled.as_text()


def test_unknown_target_is_named():
    assert "unknown target 'tpu9'" in aot.unavailable_reason("tpu9")


def test_without_the_plugin_the_reason_says_how_to_get_it():
    if REASON is None:
        pytest.skip("jax's CUDA plugin is installed here")
    assert 'pip install "jax[cuda12]"' in REASON


@needs_plugin
@pytest.mark.parametrize("backend", ["pallas_triton", "pallas_mgpu"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("spec", SHAPES, ids=lambda s: s.name)
def test_elementwise_spike_compiles_for_h200(spec, dtype, backend):
    s = spec.cls()

    def fwd_bwd(x, ct):
        with spikefuse.use_backend(backend):
            spikes, pullback = jax.vjp(lambda x: spikefuse.fire(x, 0.25, s), x)
            return spikes, pullback(ct)[0]

    x = jax.ShapeDtypeStruct(((1 << 20) + 3,), dtype)  # a ragged tail
    text = compiled_text(fwd_bwd, x, x)
    assert text.count(KERNEL[backend]) >= 2  # forward and backward, each a kernel
    assert TRITON not in text if backend == "pallas_mgpu" else MOSAIC not in text


@needs_plugin
@pytest.mark.parametrize("backend", ["pallas_triton", "pallas_mgpu"])
@pytest.mark.parametrize("name", NEURONS)
def test_neuron_forward_and_bptt_compile_for_h200(name, backend):
    def loss(x):
        spikes, state = NEURONS[name](x, backend)
        return spikes.sum() + sum(jnp.sum(s) for s in jax.tree.leaves(state))

    x = jax.ShapeDtypeStruct((11, 3, 1001), jnp.float32)  # 3,003 neurons: a ragged block
    text = compiled_text(jax.value_and_grad(loss), x)
    assert text.count(KERNEL[backend]) >= 2


@needs_plugin
def test_training_step_account_at_the_gpu_sizes():
    """bench --models --quick's H200 rows: XLA:GPU's account with the kernels compiled."""
    rows = md.gpu_size_memory(["mlp"], None, target="h200",
                              variants=("scan", "fused", "fused+checkpoint"))
    by = {r["variant"]: r for r in rows}
    assert {r["compiled_for"] for r in rows} == {"h200 (deviceless)"}
    assert by["fused"]["compiled_with"] == by["fused+checkpoint"]["compiled_with"] == "pallas"
    assert by["scan"]["temp_vs_scan"] == 1.0
    for r in rows:
        small, large = (r["memory_by_batch"][str(b)]["temp"] for b in r["batches"])
        assert 0 < small < large  # activations grow with the batch
        assert r["fits"]["80 GiB"] > r["batch"]
