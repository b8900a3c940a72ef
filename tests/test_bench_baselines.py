"""The benchmark's baselines and ceilings: the plain-JAX LIF it compares with computes the
library's LIF, and each row is held against the copy ceiling of its own size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spikefuse.neurons as sn
from spikefuse.benchmark import neurons as bn
from spikefuse.benchmark.timing import best_ceilings, ceiling_for, pct_of_ceiling


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("unroll", [1, 4])
def test_expert_lif_is_the_reference_lif(dtype, unroll):
    """A baseline that computed something else would make every speed-up meaningless: the
    same spikes bit for bit, v_final, and the gradient within float tolerance."""
    T, N = 23, 37
    x, ct_s, ct_v = bn.random_inputs(T, N, jnp.dtype(dtype), seed=3)
    ref = jax.jit(bn.make_fn("fwd+bwd", "reference", unroll=1))(x, ct_s, ct_v)
    exp = jax.jit(bn.make_fn("fwd+bwd", "jax", unroll=unroll))(x, ct_s, ct_v)
    (s_r, v_r), dx_r = ref
    (s_e, v_e), dx_e = exp
    assert 0.05 < float(jnp.mean(s_r.astype(jnp.float32))) < 0.95  # spikes and silence both
    np.testing.assert_array_equal(np.asarray(s_e, np.float32), np.asarray(s_r, np.float32))
    np.testing.assert_array_equal(np.asarray(v_e, np.float32), np.asarray(v_r, np.float32))
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(np.asarray(dx_e, np.float32), np.asarray(dx_r, np.float32), **tol)
    assert s_e.dtype == x.dtype and v_e.dtype == x.dtype and dx_e.dtype == x.dtype


def test_expert_lif_refuses_other_neurons():
    with pytest.raises(ValueError, match="NEURON"):
        bn.make_fn("fwd", "jax", unroll=1, neuron=dict(tau=3.0))


def _rec(dtype, elements, gbps):
    return dict(dtype=dtype, elements=elements, gbps=gbps)


def test_ceiling_is_the_fastest_copy_of_the_nearest_size():
    copy = [_rec("float32", 1 << 18, 50.0), _rec("float32", 1 << 18, 70.0),
            _rec("float32", 1 << 22, 10.0), _rec("bfloat16", 1 << 18, 40.0)]
    assert ceiling_for(copy, "float32", 1 << 18)["gbps"] == 70.0  # same size, fastest
    assert ceiling_for(copy, jnp.float32, (1 << 18) + 5)["gbps"] == 70.0
    assert ceiling_for(copy, "float32", 1 << 21)["gbps"] == 10.0  # nearer in log scale
    assert ceiling_for(copy, "float32", 1 << 40)["gbps"] == 10.0  # sizes past the cap
    assert ceiling_for(copy, "bfloat16", 1 << 22)["gbps"] == 40.0  # its own dtype only
    with pytest.raises(KeyError, match="float16"):
        ceiling_for(copy, "float16", 1 << 18)
    best = best_ceilings(copy)
    assert sorted((c["dtype"], c["elements"], c["gbps"]) for c in best) == [
        ("bfloat16", 1 << 18, 40.0), ("float32", 1 << 18, 70.0), ("float32", 1 << 22, 10.0)]
    row = dict(dtype="float32", elements=1 << 18, gbps=35.0)
    assert pct_of_ceiling(row, copy) == pytest.approx(50.0)


def test_plain_jax_rows_are_in_every_neuron_job():
    jobs = bn.jobs([(8, 64)], ["float32"], None)
    labels = {k[-1] for k in jobs}
    assert labels == {"scan-u1", "scan-u8", "scan-u32", "jax-u1", "jax-u8", "jax-u32"}
    assert "fused" in {k[-1] for k in bn.jobs([(8, 64)], ["float32"], "interpret")}


def test_interleaved_timing_takes_turns_and_reports_first_calls_in_order():
    from spikefuse.benchmark.timing import time_interleaved

    log = []

    def make(name):
        def fn(x):
            log.append(name)
            return x + 1

        return fn

    firsts = []
    out = time_interleaved({"b": (make("b"), (jnp.ones(3),)), "a": (make("a"), (jnp.ones(3),))},
                           samples=4, min_sample_s=0.0, on_first=firsts.append)
    assert firsts == ["b", "a"]  # in the order given, each after its own first call
    assert log[:3] == ["b"] * 3 and log[3:6] == ["a"] * 3  # warm-up, then calibration
    assert log[6:] == ["b", "a"] * 4  # one burst (of one call here) each, in turns
    for med, lo, hi in out.values():
        assert 0 < lo <= med <= hi
