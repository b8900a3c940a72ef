"""Elementwise spike benchmark: XLA reference vs Pallas kernels, against a copy ceiling.

One command on a GPU (finishes in well under 3 minutes on an H200):

    python bench/elementwise.py --out OUT_DIR

A fixed mode of the package's harness (``spikefuse.benchmark``; the same code as
``python -m spikefuse bench --suite elementwise --shapes Sigmoid --size 2^28``): times, in
one run, ``spikefuse.fire(v, 0.5, Sigmoid())`` forward, backward, forward+backward and
forward;backward with the ``"reference"`` and ``"pallas"`` backends at 2^28 f32 elements
(and bf16), plus a device copy of the same array as the bandwidth ceiling, and prints ms,
GB/s and % of the copy ceiling. Bytes counted per element (e = element size):
forward reads v, writes spikes (2e); backward reads v and the cotangent, writes dv (3e);
forward+backward 5e; the copy reads and writes (2e). Two forward+backward rows:
"fwd+bwd" lets XLA see the cotangent before the forward runs (so the reference fuses both
passes into one read of v: it moves 4e, not 5e), "fwd;bwd" puts an optimization barrier
between them, as in training, where the cotangent comes from the loss after the forward.
Timing: medians of samples of back-to-back calls, warm-up excluded
(``spikefuse/benchmark/timing.py``).

On a CPU-only machine use ``--tiny`` (2^12 elements, ``"interpret"`` for the kernels) to
check the script runs; CPU timings of interpret mode mean nothing and are labelled CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from spikefuse.benchmark import cli  # noqa: E402
from spikefuse.benchmark.timing import on_gpu  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log2n", type=int, default=28, help="log2 of the element count (default 28)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated (default float32,bfloat16)")
    parser.add_argument("--shapes", default="Sigmoid", help="comma-separated shapes (default Sigmoid)")
    parser.add_argument("--repeats", type=int, default=15, help="timed samples per row (median reported)")
    parser.add_argument("--tiny", action="store_true", help="2^12 elements, interpret backend: a CPU smoke run")
    parser.add_argument("--out", default=None, help="directory for elementwise.json")
    args = parser.parse_args(argv)

    kernel_backend = "pallas" if on_gpu() and not args.tiny else "interpret"
    opts = dict(suite="elementwise", size=1 << (12 if args.tiny else args.log2n),
                dtypes=[d for d in args.dtypes.split(",") if d], shapes=args.shapes.split(","),
                modes=["fwd", "bwd", "fwd+bwd", "fwd;bwd"],
                backends=["reference", kernel_backend], kernel_backend=kernel_backend,
                repeats=3 if args.tiny else args.repeats,
                min_sample_s=0.001 if args.tiny else 0.02, cases=[],
                threads=min(16, os.cpu_count() or 1))
    command = "python bench/elementwise.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = cli.bench(opts, command=command)
    print(cli.format_table(report))
    for note in report["notes"]:
        print("# note:", note)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "elementwise.json"), "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
