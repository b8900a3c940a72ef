"""The benchmark's baselines and ceilings: the plain-JAX LIF it compares with computes the
library's LIF, and each row is held against streaming kernels of its own size, reads and
writes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spikefuse.neurons as sn
from spikefuse.benchmark import neurons as bn
from spikefuse.benchmark.timing import best_ceilings, ceiling_for, ceiling_gbps, pct_of_ceiling


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


BYTES_PER_ELEMENT = {"1r1w": 8, "2r1w": 12}  # f32 reads + writes


def _rec(op, dtype, elements, gbps):
    nbytes = BYTES_PER_ELEMENT[op] * elements
    return dict(op=op, dtype=dtype, elements=elements, gbps=gbps, bytes=nbytes,
                ms_min=nbytes / (gbps * 1e9) * 1e3)


def test_ceiling_is_the_fastest_kernel_of_the_nearest_size():
    copy = [_rec("1r1w", "float32", 1 << 18, 50.0), _rec("1r1w", "float32", 1 << 18, 70.0),
            _rec("1r1w", "float32", 1 << 22, 10.0), _rec("1r1w", "bfloat16", 1 << 18, 40.0),
            _rec("2r1w", "float32", 1 << 18, 90.0)]
    assert ceiling_for(copy, "1r1w", "float32", 1 << 18)["gbps"] == 70.0  # same size, fastest
    assert ceiling_for(copy, "1r1w", jnp.float32, (1 << 18) + 5)["gbps"] == 70.0
    assert ceiling_for(copy, "1r1w", "float32", 1 << 21)["gbps"] == 10.0  # nearer in log scale
    assert ceiling_for(copy, "1r1w", "float32", 1 << 40)["gbps"] == 10.0  # past the largest
    assert ceiling_for(copy, "1r1w", "bfloat16", 1 << 22)["gbps"] == 40.0  # its own dtype only
    assert ceiling_for(copy, "2r1w", "float32", 1 << 22)["gbps"] == 90.0  # its own kernel only
    with pytest.raises(KeyError, match="2r1w"):
        ceiling_for(copy, "2r1w", "bfloat16", 1 << 18)
    best = best_ceilings(copy)
    assert sorted((c["op"], c["dtype"], c["elements"], c["gbps"]) for c in best) == [
        ("1r1w", "bfloat16", 1 << 18, 40.0), ("1r1w", "float32", 1 << 18, 70.0),
        ("1r1w", "float32", 1 << 22, 10.0), ("2r1w", "float32", 1 << 18, 90.0)]


def test_a_two_pass_row_is_held_against_both_kernels_one_after_the_other():
    n = 1 << 18
    copy = [_rec("1r1w", "float32", n, 60.0), _rec("2r1w", "float32", n, 90.0),
            _rec("2r1w", "float32", n // 2, 30.0)]
    # 8 + 12 bytes per element in 8/60 + 12/90 ns: 75 GB/s.
    assert ceiling_gbps(copy, "1r1w+2r1w", "float32", n) == pytest.approx(75.0)
    assert ceiling_gbps(copy, "2r1w", "float32", n) == pytest.approx(90.0)
    row = dict(dtype="float32", elements=n, gbps=37.5, ceiling="1r1w+2r1w")
    assert pct_of_ceiling(row, copy) == pytest.approx(50.0)


def test_streaming_kernels_read_and_write_what_their_names_say():
    from spikefuse.benchmark.timing import STREAMS, stream_call

    for op, want in BYTES_PER_ELEMENT.items():
        fn, args = stream_call(op, 1000, "float32")
        out = jax.eval_shape(fn, *args)
        outs = out if isinstance(out, tuple) else (out,)
        assert 4 * (len(args) + len(outs)) == want, op
        assert STREAMS[op][:2] == (len(args), len(outs))


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
