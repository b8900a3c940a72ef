"""Elementwise spike benchmark: XLA reference vs Pallas kernels, against a copy ceiling.

One command on a GPU (finishes in well under 3 minutes on an H200):

    python bench/elementwise.py --out OUT_DIR

times, in one run, ``spikefuse.fire(v, 0.5, Sigmoid())`` forward, backward and
forward+backward with the ``"reference"`` and ``"pallas"`` backends at 2^28 f32 elements
(and bf16), plus a device copy of the same array as the bandwidth ceiling, and prints ms,
GB/s and % of the copy ceiling. Bytes counted per element (e = element size):
forward reads v, writes spikes (2e); backward reads v and the cotangent, writes dv (3e);
forward+backward 5e; the copy reads and writes (2e). Two forward+backward rows:
"fwd+bwd" lets XLA see the cotangent before the forward runs (so the reference fuses both
passes into one read of v: it moves 4e, not 5e), "fwd;bwd" puts an optimization barrier
between them, as in training, where the cotangent comes from the loss after the forward.
Timing: medians of samples of back-to-back calls, warm-up excluded (bench/_harness.py).

On a CPU-only machine use ``--tiny`` (2^12 elements, ``"interpret"`` for the kernels) to
check the script runs; CPU timings of interpret mode mean nothing and are labelled CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import spikefuse  # noqa: E402
from spikefuse import surrogate  # noqa: E402
from _harness import git_commit, time_fn  # noqa: E402

BYTES_PER_ELEMENT = {"fwd": 2, "bwd": 3, "fwd+bwd": 5, "fwd;bwd": 5, "copy": 2}  # in element sizes


def make_ops(backend, s, threshold=0.5):
    def fwd(v, ct):
        return spikefuse.fire(v, threshold, s, backend=backend)

    def bwd(v, ct):
        return jax.vjp(lambda v: spikefuse.fire(v, threshold, s, backend=backend), v)[1](ct)[0]

    def fwd_bwd(v, ct):
        y, vjp = jax.vjp(lambda v: spikefuse.fire(v, threshold, s, backend=backend), v)
        return y, vjp(ct)[0]

    def fwd_then_bwd(v, ct):
        # As in training, the cotangent is only known after the forward has run: the
        # barrier stops XLA from fusing the backward into the forward's pass over v.
        y, vjp = jax.vjp(lambda v: spikefuse.fire(v, threshold, s, backend=backend), v)
        y, ct = jax.lax.optimization_barrier((y, ct))
        return y, vjp(ct)[0]

    return {"fwd": jax.jit(fwd), "bwd": jax.jit(bwd), "fwd+bwd": jax.jit(fwd_bwd),
            "fwd;bwd": jax.jit(fwd_then_bwd)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log2n", type=int, default=28, help="log2 of the element count (default 28)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated (default float32,bfloat16)")
    parser.add_argument("--repeats", type=int, default=15, help="timed samples per row (median reported)")
    parser.add_argument("--tiny", action="store_true", help="2^12 elements, interpret backend: a CPU smoke run")
    parser.add_argument("--out", default=None, help="directory for elementwise.json")
    args = parser.parse_args(argv)

    on_gpu = jax.default_backend() in ("gpu", "cuda")
    n = 1 << (12 if args.tiny else args.log2n)
    kernel_backend = "pallas" if on_gpu and not args.tiny else "interpret"
    repeats = 3 if args.tiny else args.repeats
    min_sample_s = 0.001 if args.tiny else 0.02
    device = jax.devices()[0].device_kind if on_gpu else "CPU"
    meta = {
        "date": time.strftime("%Y-%m-%d"), "device": device, "jax": jax.__version__,
        "python": platform.python_version(), "commit": git_commit(), "elements": n,
        "command": "python bench/elementwise.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print(f"# {meta['date']} | {device} | jax {jax.__version__} | n = 2^{n.bit_length() - 1} | commit {meta['commit']}")
    rows = []
    s = surrogate.Sigmoid()
    for dtype_name in args.dtypes.split(","):
        dtype = jnp.dtype(dtype_name)
        kv, kc = jax.random.split(jax.random.PRNGKey(0))
        v = jax.random.normal(kv, (n,), jnp.float32).astype(dtype)
        ct = jax.random.normal(kc, (n,), jnp.float32).astype(dtype)
        copy = jax.jit(lambda v, ct: v + jnp.asarray(1, v.dtype))
        med, lo, hi = time_fn(copy, (v, ct), samples=repeats, min_sample_s=min_sample_s)
        ceiling = BYTES_PER_ELEMENT["copy"] * dtype.itemsize * n / med
        rows.append(dict(meta, op="copy", backend="xla", dtype=dtype.name, ms=med * 1e3, ms_min=lo * 1e3,
                         ms_max=hi * 1e3, gbps=ceiling / 1e9, pct_copy=100.0))
        ref_ms = {}
        for backend in ("reference", kernel_backend):
            for mode, fn in make_ops(backend, s).items():
                med, lo, hi = time_fn(fn, (v, ct), samples=repeats, min_sample_s=min_sample_s)
                bw = BYTES_PER_ELEMENT[mode] * dtype.itemsize * n / med
                row = dict(meta, op=mode, backend=backend, dtype=dtype.name, ms=med * 1e3, ms_min=lo * 1e3,
                           ms_max=hi * 1e3, gbps=bw / 1e9, pct_copy=100.0 * bw / ceiling)
                if backend == "reference":
                    ref_ms[mode] = med
                else:
                    row["ref_over_kernel"] = ref_ms[mode] / med
                rows.append(row)

    print(f"{'dtype':<9} {'op':<8} {'backend':<10} {'ms':>8} {'(min..max)':>18} {'GB/s':>8} {'% copy':>7} {'ref/kernel':>10}")
    for r in rows:
        speed = f"{r['ref_over_kernel']:.3f}" if "ref_over_kernel" in r else ""
        print(f"{r['dtype']:<9} {r['op']:<8} {r['backend']:<10} {r['ms']:8.3f} {r['ms_min']:8.3f}..{r['ms_max']:8.3f} "
              f"{r['gbps']:8.1f} {r['pct_copy']:6.1f}% {speed:>10}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "elementwise.json"), "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
