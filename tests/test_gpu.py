"""Compiled Pallas kernels on a real GPU against the reference backend.

Skipped (with the reason shown) on machines without a GPU; run on the GPU machine by
`bench/gpu_run.sh`. The same checks as test_spike_backends.py's interpret binding, at sizes
that span thousands of blocks with ragged tails, for both GPU kernel families: "pallas"
(Triton while jax has it) and "pallas_mgpu" (Mosaic GPU; never run on a GPU before this
file runs on one).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spikefuse
from spikefuse import surrogate
from spikefuse.surrogate.registry import SHAPES

pytestmark = pytest.mark.skipif(
    jax.default_backend() not in ("gpu", "cuda"), reason="needs a GPU (compiled Pallas kernels)"
)


class Tanh(surrogate.Surrogate):
    def __init__(self, alpha=2.0):
        super().__init__()
        self.alpha = alpha

    def surrogate_grad(self, x):
        t = jnp.tanh(self.alpha * x)
        return self.alpha * (1.0 - t * t)


ALL = [pytest.param(spec.cls, id=spec.name) for spec in SHAPES] + [pytest.param(Tanh, id="user-Tanh")]
# Looser than interpret mode's 1e-6: on the GPU the kernel's exp/tanh come from Triton's
# libdevice and the reference's from XLA, which differ by an ulp or two, and s (1 - s)
# cancels for large z.
TOL = {jnp.float32: (1e-5, 1e-6), jnp.bfloat16: (1e-2, 1e-3)}
# The user Tanh's 1 - tanh^2 cancels where tanh saturates: Triton's tanh reaches 1 - 6e-8
# where XLA's is exactly 1, so g' differs by ~1e-6 absolute there (seen on an H200).
TOL_CANCELLING = {jnp.float32: (1e-5, 1e-5), jnp.bfloat16: (1e-2, 1e-3)}


def _run(s, x, thr, ct, backend):
    f = lambda v: spikefuse.fire(v, thr, s, backend=backend)  # noqa: E731
    fn = jax.jit(lambda x, ct: (lambda y_vjp: (y_vjp[0], y_vjp[1](ct)[0]))(jax.vjp(f, x)) + (jax.jvp(f, (x,), (ct,))[1],))
    return fn(x, ct)


@pytest.mark.parametrize("backend", ["pallas", "pallas_mgpu"])
@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("shape", [(1 << 20) + 3], ids=str)
def test_compiled_pallas_equals_reference(cls, dtype, shape, backend):
    rng = np.random.default_rng(0)
    shape = shape if isinstance(shape, tuple) else (shape,)
    x = jnp.asarray(rng.normal(0, 2, shape), dtype)
    ct = jnp.asarray(rng.normal(0, 1, shape), dtype)
    s = cls()
    ref = _run(s, x, 0.25, ct, "reference")
    ker = _run(s, x, 0.25, ct, backend)
    np.testing.assert_array_equal(np.asarray(ker[0]), np.asarray(ref[0]))
    rtol, atol = (TOL_CANCELLING if cls is Tanh else TOL)[dtype]
    for k, r in zip(ker[1:], ref[1:]):
        assert k.dtype == dtype
        np.testing.assert_allclose(np.asarray(k, np.float64), np.asarray(r, np.float64), rtol=rtol, atol=atol)


def test_auto_picks_per_operation_on_gpu():
    from spikefuse.kernels import dispatch

    assert dispatch.resolve("auto", op="neurons") == "pallas"
    assert dispatch.resolve("auto", op="elementwise") == "reference"
