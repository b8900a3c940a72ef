"""Triton vs Mosaic GPU: the two GPU kernel families side by side, against the copy ceiling.

One command on a GPU (sized for about 3 minutes on an H200, compilation included):

    python bench/families.py --out OUT_DIR

With the harness of ``python -m spikefuse bench`` (``spikefuse/benchmark/``), it times, in
turns (every sample round times every row once, so load changes fall on all alike):

* the elementwise spike, ``spikefuse.fire(v, 0.5, Sigmoid())`` forward and backward at 2^28
  f32 elements, with ``backend="pallas_triton"`` and ``backend="pallas_mgpu"``;
* forward+backward of every built-in neuron (IF, LIF, PLIF, ALIF) and the AdEx example step
  (``examples/adex.py``) at T=32 x 4M f32, fused by each family;

each beside its copy ceiling (a read-and-write and a two-reads-one-write stream of the
same size). It prints ms (median, min..max), GB/s (bytes counted as in ``bench/RESULTS.md``:
elementwise fwd 2e and bwd 3e per element; the fused neurons per ``kernels/scan.py``'s
design, `spikefuse.benchmark.neurons.fused_bytes`), % of the ceiling, and the Mosaic GPU
row's time over the Triton row's. ``--out`` writes ``families.json``.

What the figures decide: ``GPU_FAMILY`` in ``spikefuse/kernels/dispatch.py`` turns an
operation's row to ``"mgpu"`` when Mosaic GPU is at least as fast as Triton there (the
issue's targets: fused LIF forward+backward >= 90 % of the copy ceiling and within 5 % of
Triton; elementwise at the ceiling). Every figure goes into ``bench/RESULTS.md`` with date,
device, jax version and command.

``--tiny`` is a CPU smoke run (small sizes, the kernels interpreted: ``"interpret"`` and
``"interpret_mgpu"``): it checks that the script runs; its timings mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from spikefuse.benchmark import elementwise as ew  # noqa: E402
from spikefuse.benchmark import neurons as nr  # noqa: E402
from spikefuse.benchmark.timing import (  # noqa: E402
    ceiling_calls,
    ceiling_gbps,
    ceiling_records,
    machine_info,
    on_gpu,
    time_interleaved,
)
from spikefuse.kernels import mgpu_scan, scan  # noqa: E402

FAMILIES = {"triton": "pallas_triton", "mgpu": "pallas_mgpu"}
TINY_FAMILIES = {"triton": "interpret", "mgpu": "interpret_mgpu"}
NEURONS = ("if", "lif", "plif", "alif", "adex")
EW_BYTES = {"fwd": 2, "bwd": 3}  # per element, x itemsize
EW_CEILING = {"fwd": "1r1w", "bwd": "2r1w"}


def _elementwise(backends, n, dtype, samples, min_sample_s):
    v = jax.random.normal(jax.random.PRNGKey(0), (n,), jnp.float32).astype(dtype) + 0.5
    ct = jax.random.normal(jax.random.PRNGKey(1), (n,), jnp.float32).astype(dtype)
    calls = {}
    for family, backend in backends.items():
        ops = ew.make_ops("Sigmoid", backend)
        for mode in EW_BYTES:
            calls[(family, mode)] = (jax.jit(ops[mode]), (v, ct))
    calls.update(ceiling_calls(EW_CEILING.values(), n, dtype))
    times = time_interleaved(calls, samples=samples, min_sample_s=min_sample_s)
    copy = ceiling_records(times)
    rows = []
    for (family, mode), (med, lo, hi) in times.items():
        nbytes = EW_BYTES[mode] * n * jnp.dtype(dtype).itemsize
        rows.append(dict(suite="elementwise", op="fire Sigmoid", mode=mode, family=family,
                         backend=backends[family], shape=f"n={n}", elements=n,
                         dtype=jnp.dtype(dtype).name, ms=med * 1e3, ms_min=lo * 1e3,
                         ms_max=hi * 1e3, bytes=nbytes, gbps=nbytes / med / 1e9,
                         ceiling=EW_CEILING[mode]))
    return rows, copy


def _neuron(model, backends, T, N, dtype, samples, min_sample_s):
    args = nr.random_inputs(T, N, dtype, model=model)
    configs = {"triton": scan.default_config(T, N, dtype),
               "mgpu": mgpu_scan.default_config(T, N, dtype)}
    calls = {family: (jax.jit(nr.make_fn("fwd+bwd", backend, config=configs[family],
                                         model=model)), args)
             for family, backend in backends.items()}
    calls.update(ceiling_calls([nr.CEILING["fwd+bwd"]], T * N, dtype))
    times = time_interleaved(calls, samples=samples, min_sample_s=min_sample_s)
    copy = ceiling_records(times)
    rows = []
    for family, (med, lo, hi) in times.items():
        nbytes = nr.fused_bytes(T, N, jnp.dtype(dtype).itemsize, configs[family].chunk,
                                "fwd+bwd", nr.NEURONS[model].n_state)
        rows.append(dict(suite="neurons", op=model, mode="fwd+bwd", family=family,
                         backend=backends[family], shape=f"T={T} N={N}", T=T, N=N,
                         elements=T * N, dtype=jnp.dtype(dtype).name, ms=med * 1e3,
                         ms_min=lo * 1e3, ms_max=hi * 1e3, bytes=nbytes,
                         gbps=nbytes / med / 1e9, ceiling=nr.CEILING["fwd+bwd"],
                         config=str(configs[family])))
    return rows, copy


def _finish(rows, copy):
    """% of the ceiling per row, and each Mosaic GPU row's time over its Triton row's."""
    for r in rows:
        r["pct_copy"] = 100.0 * r["gbps"] / ceiling_gbps(copy, r["ceiling"], r["dtype"],
                                                         r["elements"])
    triton = {(r["op"], r["mode"], r["shape"]): r["ms"] for r in rows if r["family"] == "triton"}
    for r in rows:
        r["vs_triton"] = r["ms"] / triton[(r["op"], r["mode"], r["shape"])]


def format_table(rows) -> str:
    head = (f"{'op':<14}{'mode':<9}{'shape':<18}{'family':<8}{'ms':>9}{'min..max':>20}"
            f"{'GB/s':>9}{'% copy':>8}{'/triton':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['op']:<14}{r['mode']:<9}{r['shape']:<18}{r['family']:<8}"
                     f"{r['ms']:>9.3f}{r['ms_min']:>10.3f}..{r['ms_max']:<8.3f}"
                     f"{r['gbps']:>9.1f}{r['pct_copy']:>7.1f}%{r['vs_triton']:>9.3f}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log2n", type=int, default=28,
                        help="log2 of the elementwise element count (default 28)")
    parser.add_argument("--case", default="32x4194304", help="neuron case TxN (default 32x4M)")
    parser.add_argument("--neurons", default=",".join(NEURONS),
                        help=f"comma-separated (default {','.join(NEURONS)})")
    parser.add_argument("--repeats", type=int, default=15, help="samples per row (median)")
    parser.add_argument("--tiny", action="store_true",
                        help="CPU smoke run: small sizes, the kernels interpreted")
    parser.add_argument("--out", default=None, help="directory for families.json")
    args = parser.parse_args(argv)
    if not (on_gpu() or args.tiny):
        parser.error("needs a GPU (compiled kernels); --tiny runs a CPU smoke test")
    backends = TINY_FAMILIES if args.tiny else FAMILIES
    n = 1 << (10 if args.tiny else args.log2n)
    T, N = (4, 256) if args.tiny else map(int, args.case.lower().split("x"))
    samples, min_s = (2, 0.0) if args.tiny else (args.repeats, 0.02)
    rows, copy = _elementwise(backends, n, "float32", samples, min_s)
    for model in filter(None, args.neurons.split(",")):
        more, c = _neuron(model, backends, T, N, "float32", samples, min_s)
        rows += more
        copy += c
    _finish(rows, copy)
    meta = dict(machine_info(), command="python bench/families.py " + " ".join(
        argv if argv is not None else sys.argv[1:]))
    print(f"# {meta['device']} | jax {meta['jax']} | commit {meta['commit']}"
          + (" | CPU smoke run: timings meaningless" if args.tiny else ""))
    print(format_table(rows))
    report = dict(meta=meta, copy=copy, rows=rows)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "families.json"), "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
