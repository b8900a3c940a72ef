"""``examples/brainstate_mlp.py``: braintools' documented brainstate model, three ways.

(a) as documented with braintools' surrogate, (b) with spikefuse's, (c) rewritten around a
fused multi-step ``spikefuse.neurons.LIF`` per layer: the same first-step loss and
gradients (the fused kernels interpreted as well as on the reference backend), and (c)
trains. brainstate and braintools 0.4.0 exist for Python >= 3.12 only: elsewhere this module
is skipped, unless SPIKEFUSE_REQUIRE_BRAINTOOLS=1 (CI sets it on 3.12), where a missing
brainstate or braintools is a failure, as in ``test_braintools_parity.py``.
"""

import importlib.util
import os
import pathlib
import sys

import jax
import numpy as np
import pytest

if os.environ.get("SPIKEFUSE_REQUIRE_BRAINTOOLS") != "1":
    for _module in ("brainstate", "braintools"):
        pytest.importorskip(_module, reason=f"the brainstate example needs {_module} "
                            "(Python >= 3.12; SPIKEFUSE_REQUIRE_BRAINTOOLS=1 makes it required)")

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "examples" / "brainstate_mlp.py"
T, BATCH = 4, 8


def _load():
    spec = importlib.util.spec_from_file_location("brainstate_mlp", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ex = _load()


def _first_step(variant, backend=None):
    import brainstate as bst

    model = ex.build(variant, seed=3, backend=backend)
    x, target = ex.data(BATCH, seed=3)
    grads, loss = bst.transform.jit(ex.loss_and_grad(model, T))(x, target)
    out = bst.transform.jit(lambda x: model(x, T))(x)
    return float(loss), grads, np.asarray(out)


@pytest.fixture(scope="module")
def documented():
    return _first_step("a")


@pytest.mark.parametrize("variant,backend", [("b", None), ("c", "reference"), ("c", "interpret")])
def test_variants_agree_on_the_first_step(documented, variant, backend):
    loss_a, grads_a, out_a = documented
    loss, grads, out = _first_step(variant, backend)
    assert 0 < out_a.mean() < 0.9  # the output layer fires, not always
    np.testing.assert_array_equal(out, out_a)  # the same spikes in every step
    np.testing.assert_allclose(loss, loss_a, rtol=1e-6)
    assert set(grads) == set(grads_a)  # the same parameters, by path
    leaves_a = jax.tree.leaves(grads_a)
    assert any(float(np.abs(g).max()) > 0 for g in leaves_a)
    for g, g_a in zip(jax.tree.leaves(grads), leaves_a):
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_a), rtol=1e-5,
                                   atol=1e-6 * max(float(np.abs(g_a).max()), 1e-30))


def test_fused_variant_trains():
    lines = []
    results = ex.main(["--variant", "c", "--iterations", "8", "--steps", str(T), "--batch",
                       str(BATCH)], log=lines.append)
    losses = results["c"]["losses"]
    assert len(losses) == 8 and all(np.isfinite(losses))
    assert losses[-1] < 0.6 * losses[0], losses
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 6, losses  # falls nearly always
    assert any("(c) iteration   8/8" in line for line in lines)


def test_bad_arguments_exit_2():
    for argv in (["--variant", "d"], ["--iterations", "0"]):
        with pytest.raises(SystemExit) as exc:
            ex.main(argv, log=lambda *_: None)
        assert exc.value.code == 2
