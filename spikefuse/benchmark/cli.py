"""``python -m spikefuse bench`` — how fast is each surrogate shape, backend and neuron here.

Runs the elementwise suite (``fire`` for every built-in shape × backend × fwd / bwd /
fwd+bwd / fwd;bwd) and the neuron suite (multi-step LIF: fused kernels vs ``lax.scan`` with
unroll 1, 8, 32), measures a memory-copy ceiling (``x + 1``) in the same run, prints a
table and optionally writes JSON and a chart. Timing: compilation and warm-up excluded;
every sample is a burst of back-to-back calls ended by ``block_until_ready``; the median
(and min..max) of ``--repeats`` samples is reported.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax.numpy as jnp

from spikefuse.benchmark import elementwise as ew
from spikefuse.benchmark import neurons as nr
from spikefuse.benchmark.timing import copy_ceiling, machine_info, on_accelerator
from spikefuse.surrogate import registry

QUICK = dict(size=1 << 18, dtypes="float32", repeats=5, min_sample_ms=5.0,
             cases=nr.QUICK_CASES)
FULL = dict(size=1 << 26, dtypes="float32,bfloat16", repeats=15, min_sample_ms=20.0,
            cases=nr.CASES)


def parse_size(text: str) -> int:
    """``67108864``, ``2^26``, ``2**26`` or ``1<<26`` -> a positive element count."""
    t = text.strip().replace(" ", "")
    try:
        for sep in ("^", "**"):
            if sep in t:
                base, exp = t.split(sep)
                n = int(base) ** int(exp)
                break
        else:
            n = (1 << int(t.split("<<")[1])) * int(t.split("<<")[0]) if "<<" in t else int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 65536 or 2^16)") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return n


def parse_cases(text: str) -> list[tuple[int, int]]:
    """``32x16384,256x1024`` -> [(32, 16384), (256, 1024)] (T steps x N neurons)."""
    out = []
    for item in filter(None, text.split(",")):
        try:
            T, N = (parse_size(p) for p in item.lower().split("x"))
        except (ValueError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(
                f"not a neuron case: {item!r} (expected TxN, e.g. 32x16384)") from None
        out.append((T, N))
    if not out:
        raise argparse.ArgumentTypeError("no neuron cases given")
    return out


def _csv(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``bench`` subcommand; its handler is ``run_bench``."""
    p = subparsers.add_parser(
        "bench", help="benchmark every shape, backend and neuron on this machine",
        description=__doc__.replace("``", ""), formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n  python -m spikefuse bench --quick            # CPU-sized, < 90 s\n"
               "  python -m spikefuse bench --json out.json --plot out.png   # GPU-sized\n"
               "  python -m spikefuse bench --suite elementwise --shapes Sigmoid,Arctan "
               "--size 2^20")
    p.add_argument("--quick", action="store_true",
                   help="CPU-sized run: 2^18 elements, float32, 5 repeats, neuron cases "
                        "32x16384 and 256x1024 (finishes in about a minute on 2 CPU cores). "
                        "Explicit options still override it.")
    p.add_argument("--suite", choices=("all", "elementwise", "neurons"), default="all",
                   help="which suite to run (default all)")
    p.add_argument("--shapes", type=_csv, default=None, metavar="NAME[,NAME...]",
                   help="elementwise shapes by class or functional name, comma-separated "
                        f"(default all {len(registry.SHAPES)}: {', '.join(registry.names())})")
    p.add_argument("--dtypes", type=_csv, default=None, metavar="DTYPE[,DTYPE...]",
                   help="input dtypes, comma-separated: float32, bfloat16, float16 "
                        "(default float32,bfloat16; --quick: float32)")
    p.add_argument("--size", type=parse_size, default=None, metavar="N",
                   help="elements per elementwise array, e.g. 67108864 or 2^26 "
                        "(default 2^26, sized for a GPU; --quick: 2^18)")
    p.add_argument("--cases", type=parse_cases, default=None, metavar="TxN[,TxN...]",
                   help="neuron cases, T steps x N neurons (default "
                        + ",".join(f"{T}x{N}" for T, N in nr.CASES)
                        + "; --quick: " + ",".join(f"{T}x{N}" for T, N in nr.QUICK_CASES) + ")")
    p.add_argument("--backends", type=_csv, default=None, metavar="NAME[,NAME...]",
                   help="backends to time: reference (always the baseline), pallas (GPU), "
                        "interpret (the kernels interpreted on any device: slow, timings "
                        "meaningless, never chosen by default), braintools (elementwise only, "
                        "when importable). Default: reference, pallas on a GPU, braintools "
                        "when importable. An unavailable backend is an error.")
    p.add_argument("--modes", type=_csv, default=None, metavar="MODE[,MODE...]",
                   help="elementwise modes: fwd, bwd, fwd+bwd (the cotangent visible to "
                        "XLA), fwd;bwd (a barrier between them, as in training) (default all)")
    p.add_argument("--repeats", type=int, default=None, metavar="K",
                   help="timed samples per row; the median is reported (default 15; --quick 5)")
    p.add_argument("--min-sample-ms", type=float, default=None, metavar="MS",
                   help="each sample repeats the call back to back for about this long "
                        "(default 20; --quick 5)")
    p.add_argument("--threads", type=int, default=min(16, os.cpu_count() or 1),
                   help="threads compiling in parallel (default: CPU count, at most 16)")
    p.add_argument("--json", metavar="PATH", default=None,
                   help="write machine, jax version, device, commit and every figure as JSON")
    p.add_argument("--plot", metavar="PATH.png", default=None,
                   help='draw the figures into an image (needs matplotlib: pip install '
                        '"spikefuse[plot]")')
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (it is shown only when stdout is a terminal)")
    p.set_defaults(handler=run_bench, parser=p)
    return p


def _options(args, parser):
    """Resolves defaults (quick or full) and validates; errors exit 2 via ``parser.error``."""
    base = QUICK if args.quick else FULL
    opts = dict(
        suite=args.suite,
        size=args.size or base["size"],
        dtypes=args.dtypes or _csv(base["dtypes"]),
        repeats=args.repeats if args.repeats is not None else base["repeats"],
        min_sample_s=(args.min_sample_ms if args.min_sample_ms is not None
                      else base["min_sample_ms"]) / 1e3,
        cases=args.cases or base["cases"],
        threads=args.threads,
    )
    if opts["repeats"] < 1:
        parser.error("--repeats must be at least 1")
    if opts["min_sample_s"] < 0:
        parser.error("--min-sample-ms must not be negative")
    for d in opts["dtypes"]:
        try:
            dt = jnp.dtype(d)
        except TypeError:
            parser.error(f"--dtypes: unknown dtype {d!r}")
        if not jnp.issubdtype(dt, jnp.floating):
            parser.error(f"--dtypes: {d!r} is not a floating dtype")
    opts["dtypes"] = [jnp.dtype(d).name for d in opts["dtypes"]]
    try:
        opts["shapes"] = [registry.spec(s).name for s in args.shapes] if args.shapes else \
            registry.names()
    except (KeyError, ValueError) as err:
        parser.error(f"--shapes: {err}")
    modes = args.modes or list(ew.MODES)
    bad = [m for m in modes if m not in ew.MODES]
    if bad:
        parser.error(f"--modes: unknown {', '.join(bad)} (choose from {', '.join(ew.MODES)})")
    opts["modes"] = modes
    backends = args.backends or ew.available_backends()
    for b in backends:
        reason = ew.unavailable_reason(b)
        if reason:
            parser.error(f"--backends: {reason}")
    # reference first: it is the baseline every speed-up is relative to.
    opts["backends"] = ["reference"] + [b for b in dict.fromkeys(backends) if b != "reference"]
    kernels = [b for b in opts["backends"] if b in ("pallas", "interpret")]
    opts["kernel_backend"] = kernels[0] if kernels else None
    for path, what in ((args.json, "--json"), (args.plot, "--plot")):
        if path and os.path.isdir(path):
            parser.error(f"{what}: {path!r} is a directory; give a file path")
    return opts


def _fmt_rate(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"


def format_table(report: dict) -> str:
    """The terminal table: one line per row, grouped by suite."""
    lines = []
    for suite in ("elementwise", "neurons"):
        rows = [r for r in report["rows"] if r["suite"] == suite]
        if not rows:
            continue
        title = ("elementwise: fire(v, 0.5, Shape()) at default parameters" if suite == "elementwise"
                 else "neurons: multi-step LIF (tau=2, hard reset, Sigmoid), loss through s and v")
        lines.append(f"\n## {title}")
        ceil = ", ".join(f"{k} {v['gbps']:.1f} GB/s" for k, v in report["copy"].items())
        lines.append(f"# copy ceiling (x + 1, read + write) measured in this run: {ceil}")
        extra = "  x best" if suite == "neurons" else ""
        first = "case" if suite == "neurons" else "shape"
        lines.append(f"{first:<24} {'dtype':<8} {'mode':<7} {'backend':<10} {'ms':>9} "
                     f"{'min..max':>19} {'elem/s':>8} {'GB/s':>8} {'%ceil':>6} {'x ref':>6}{extra}")
        prev = None
        for r in rows:
            key = (r["shape"], r["dtype"])
            if prev is not None and key != prev:
                lines.append("")
            prev = key
            baseline = r["backend"] in ("reference", "scan-u1")  # x ref of itself: left blank
            sp = (f"{r['speedup_vs_reference']:6.2f}" if "speedup_vs_reference" in r
                  and not baseline else " " * 6)
            best = f"  {r['speedup_vs_best_scan']:6.2f}" if "speedup_vs_best_scan" in r else ""
            lines.append(f"{r['shape']:<24} {r['dtype']:<8} {r['mode']:<7} {r['backend']:<10} "
                         f"{r['ms']:9.3f} {r['ms_min']:9.3f}..{r['ms_max']:<8.3f} "
                         f"{_fmt_rate(r['elements_per_s']):>8} {r['gbps']:8.2f} "
                         f"{r['pct_copy']:5.1f}% {sp}{best}")
    return "\n".join(lines)


def plot_report(report: dict, path: str) -> str:
    """A chart of the report's figures: GB/s per row, grouped by backend, copy ceiling dashed."""
    from spikefuse.plot import _matplotlib  # the same lazy import and install hint

    Figure, Canvas = _matplotlib()
    panels = []  # (title, rows)
    for suite in ("elementwise", "neurons"):
        rows = [r for r in report["rows"] if r["suite"] == suite]
        for mode in dict.fromkeys(r["mode"] for r in rows):
            panels.append((suite, mode, [r for r in rows if r["mode"] == mode]))
    if not panels:
        raise ValueError("nothing to plot: the report has no rows")
    meta = report["meta"]
    fig = Figure(figsize=(12, 3.4 * len(panels)), dpi=100, layout="constrained")
    fig.suptitle(f"spikefuse bench | {meta['device']} | jax {meta['jax']} | "
                 f"{meta['date']} | commit {meta['commit']}")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    dtypes = list(dict.fromkeys(r["dtype"] for r in report["rows"]))
    for ax, (suite, mode, rows) in zip(axes, panels):
        groups = list(dict.fromkeys((r["shape"], r["dtype"]) for r in rows))
        backends = list(dict.fromkeys(r["backend"] for r in rows))
        width = 0.8 / len(backends)
        for i, b in enumerate(backends):
            xs, ys = [], []
            for j, g in enumerate(groups):
                r = next((r for r in rows if (r["shape"], r["dtype"]) == g and r["backend"] == b),
                         None)
                if r:
                    xs.append(j + (i - (len(backends) - 1) / 2) * width)
                    ys.append(r["gbps"])
            ax.bar(xs, ys, width=width, label=b)
        for k, d in enumerate(dtypes):
            if d in report["copy"]:
                ax.axhline(report["copy"][d]["gbps"], color=f"C{len(backends) + k}",
                           linestyle="--", linewidth=1, label=f"copy ceiling {d}")
        labels = [s if len(dtypes) == 1 else f"{s}\n{d}" for s, d in groups]
        ax.set_xticks(range(len(groups)), labels, rotation=45 if suite == "elementwise" else 0,
                      ha="right" if suite == "elementwise" else "center", fontsize=8)
        ax.set_ylabel("GB/s (bytes counted)")
        what = "fire" if suite == "elementwise" else "LIF"
        ax.set_title(f"{suite}: {what} {mode} ({rows[0]['elements']:,} elements)"
                     if suite == "elementwise" else f"{suite}: {what} {mode}")
        ax.legend(fontsize=7, ncol=min(6, len(backends) + len(dtypes)))
        ax.grid(axis="y", alpha=0.3)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Canvas(fig)
    fig.savefig(path)
    return path


class _Progress:
    """A tqdm bar on a terminal; silent otherwise."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # a declared dependency, but never worth failing a benchmark
                return
            self.bar = tqdm(total=total, unit="row", dynamic_ncols=True, leave=False)

    def __call__(self, row):
        if self.bar is not None:
            self.bar.set_postfix_str(f"{row['op']} {row['dtype']} {row['mode']} {row['backend']}",
                                     refresh=False)
            self.bar.update()

    def close(self):
        if self.bar is not None:
            self.bar.close()


def bench(opts: dict, *, progress: bool = False, command: str = "") -> dict:
    """Runs the chosen suites; returns the report {meta, copy, rows}."""
    t0 = time.perf_counter()
    meta = machine_info()
    row_meta = {k: meta[k] for k in ("device", "jax", "commit")}
    report = dict(meta=dict(meta, command=command, options={
        k: v for k, v in opts.items() if k != "cases"}, neuron_cases=opts["cases"]),
        copy={}, rows=[], notes=[])
    if opts["kernel_backend"] == "interpret":
        report["notes"].append("'interpret' runs the Pallas kernels interpreted: its timings "
                               "say nothing about kernel speed")
    run_ew = opts["suite"] in ("all", "elementwise")
    run_nr = opts["suite"] in ("all", "neurons")
    ew_backends = opts["backends"]
    ew_cases = ew.cases(opts["shapes"], opts["dtypes"], opts["size"]) if run_ew else []
    total = len(ew_cases) * len(ew_backends) * len(opts["modes"])
    if run_nr:
        total += (len(opts["cases"]) * len(opts["dtypes"]) * len(nr.MODES)
                  * len(nr.row_labels(opts["kernel_backend"])))
    copy_n = max([opts["size"] if run_ew else 0]
                 + ([max(T * N for T, N in opts["cases"])] if run_nr else []))
    copy_n = min(copy_n, nr.COPY_ELEMENTS)
    for d in opts["dtypes"]:
        report["copy"][d] = copy_ceiling(copy_n, d, samples=opts["repeats"],
                                         min_sample_s=opts["min_sample_s"])
    bar = _Progress(total, progress)
    try:
        if run_ew:
            report["rows"] += ew.run(ew_cases, ew_backends, modes=opts["modes"],
                                     copy=report["copy"], samples=opts["repeats"],
                                     min_sample_s=opts["min_sample_s"], threads=opts["threads"],
                                     progress=bar, meta=row_meta)
        if run_nr:
            compiled = nr.compile_all_jobs(opts["cases"], opts["dtypes"], opts["kernel_backend"],
                                           threads=opts["threads"])
            report["rows"] += nr.time_all(compiled, opts["cases"], opts["dtypes"],
                                          opts["kernel_backend"], copy=report["copy"],
                                          samples=opts["repeats"],
                                          min_sample_s=opts["min_sample_s"], progress=bar,
                                          meta=row_meta)
    finally:
        bar.close()
    report["meta"]["seconds"] = time.perf_counter() - t0
    return report


def _check_finite(report):
    bad = [r for r in report["rows"] if not (math.isfinite(r["ms"]) and r["ms"] > 0)]
    if bad:
        report["notes"].append(f"{len(bad)} rows with a non-positive or non-finite time")


def run_bench(args: argparse.Namespace) -> int:
    """The ``bench`` subcommand: runs, prints the table, writes JSON / the chart."""
    parser = args.parser
    opts = _options(args, parser)
    if args.plot:  # fail before a long run, not after it
        try:
            from spikefuse.plot import _matplotlib
            _matplotlib()
        except ImportError as err:
            print(f"error: --plot: {err}", file=sys.stderr)
            return 2
    meta_line = machine_info()
    print(f"# spikefuse bench | {meta_line['date']} | {meta_line['device']} "
          f"({meta_line['platform']}) | jax {meta_line['jax']} | commit {meta_line['commit']}")
    print(f"# suites: {opts['suite']} | dtypes {','.join(opts['dtypes'])} | elementwise "
          f"{opts['size']:,} elements | backends {','.join(opts['backends'])} | "
          f"{opts['repeats']} repeats (median)", flush=True)
    if not on_accelerator() and not args.quick and opts["size"] >= FULL["size"]:
        print("# note: the default sizes suit a GPU; on a CPU try --quick", flush=True)
    progress = not args.no_progress and sys.stdout.isatty()
    report = bench(opts, progress=progress,
                   command="python -m spikefuse bench " + " ".join(args.argv or []))
    _check_finite(report)
    print(format_table(report))
    for note in report["notes"]:
        print("# note:", note)
    print(f"# {len(report['rows'])} rows in {report['meta']['seconds']:.1f} s")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"# wrote {args.json}")
    if args.plot:
        print(f"# wrote {plot_report(report, args.plot)}")
    return 0
