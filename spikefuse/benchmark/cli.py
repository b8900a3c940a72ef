"""``python -m spikefuse bench`` — how fast is each surrogate shape, backend and neuron here.

Runs the elementwise suite (``fire`` for every built-in shape × backend × fwd / bwd /
fwd+bwd / fwd;bwd) and the neuron suite (multi-step neurons — LIF by default, ``--neurons``
for IF, PLIF, ALIF and the AdEx example step: fused kernels vs ``lax.scan`` with
unroll 1, 8, 32, ours and an expert's plain JAX), measures a bandwidth ceiling for each
row in the same run (streaming kernels with its reads and writes, at its size), prints a
table and optionally writes JSON and a chart. ``--models`` instead times whole training
steps of spiking networks (an MLP, a VGG-style conv net, one long LIF layer) in every way a
user could write them, with their memory, and sweeps training memory against T. Timing:
compilation and warm-up excluded; every sample is a burst of back-to-back calls ended by
``block_until_ready``; the median (and min..max) of ``--repeats`` samples is reported.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

import jax.numpy as jnp

from spikefuse.benchmark import aot
from spikefuse.benchmark import elementwise as ew
from spikefuse.benchmark import models as md
from spikefuse.benchmark import neurons as nr
from spikefuse.benchmark.timing import (
    best_ceilings,
    ceiling_for,
    machine_info,
    on_accelerator,
    pct_of_ceiling,
)
from spikefuse.surrogate import registry

QUICK: dict[str, Any] = dict(size=1 << 18, dtypes="float32", repeats=5, min_sample_ms=5.0,
             cases=nr.QUICK_CASES)
FULL: dict[str, Any] = dict(size=1 << 26, dtypes="float32,bfloat16", repeats=15, min_sample_ms=20.0,
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
               "--size 2^20\n"
               "  python -m spikefuse bench --models --quick --plot memory.png  # models, CPU")
    p.add_argument("--quick", action="store_true",
                   help="CPU-sized run: 2^18 elements, float32, 5 repeats, neuron cases "
                        "32x16384 and 256x1024 (finishes in about a minute on 2 CPU cores). "
                        "Explicit options still override it.")
    p.add_argument("--suite", choices=("all", "elementwise", "neurons"), default=None,
                   help="which suite to run (default all)")
    p.add_argument("--models", type=_csv, nargs="?", const=list(md.MODELS), default=None,
                   metavar="NAME[,NAME...]",
                   help="time whole training steps instead of the kernel suites: "
                        f"{', '.join(md.MODELS)} (default all three), each as "
                        f"{', '.join(md.VARIANTS)}; then training memory vs T of one LIF "
                        "layer and vs batch (--plot draws both), and the memory targets. "
                        "Needs optax (the bench extra).")
    p.add_argument("--memory-T", type=lambda t: [parse_size(x) for x in _csv(t)], default=None,
                   metavar="T[,T...]", dest="memory_T",
                   help="--models: the sequence lengths of the memory sweep (default "
                        + ",".join(map(str, md.MEMORY_TS)) + ")")
    p.add_argument("--shapes", type=_csv, default=None, metavar="NAME[,NAME...]",
                   help="elementwise shapes by class or functional name, comma-separated "
                        f"(default all {len(registry.SHAPES)}: {', '.join(registry.names())})")
    p.add_argument("--dtypes", type=_csv, default=None, metavar="DTYPE[,DTYPE...]",
                   help="input dtypes, comma-separated: float32, bfloat16, float16 "
                        "(default float32,bfloat16; --quick: float32)")
    p.add_argument("--size", type=parse_size, default=None, metavar="N",
                   help="elements per elementwise array, e.g. 67108864 or 2^26 "
                        "(default 2^26, sized for a GPU; --quick: 2^18)")
    p.add_argument("--neurons", type=_csv, default=None, metavar="NAME[,NAME...]",
                   help="neurons of the neuron suite: "
                        + ", ".join(f"{n} ({v.title})" for n, v in nr.NEURONS.items())
                        + " (default lif)")
    p.add_argument("--cases", type=parse_cases, default=None, metavar="TxN[,TxN...]",
                   help="neuron cases, T steps x N neurons (default "
                        + ",".join(f"{T}x{N}" for T, N in nr.CASES)
                        + "; --quick: " + ",".join(f"{T}x{N}" for T, N in nr.QUICK_CASES) + ")")
    p.add_argument("--backends", type=_csv, default=None, metavar="NAME[,NAME...]",
                   help="backends to time: reference (always the baseline), pallas (GPU), "
                        "interpret (the kernels interpreted on any device: slow, timings "
                        "meaningless, never chosen by default), braintools (the elementwise "
                        "rows and --models' step-braintools, when importable). Default: "
                        "reference, pallas on a GPU, braintools when importable. An "
                        "unavailable backend is an error.")
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
                        '"spikefuse[plot]"); --models also writes PATH-batch.png, memory vs '
                        'batch')
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (it is shown only when stdout is a terminal)")
    p.set_defaults(handler=run_bench, parser=p)
    return p


def _options(args, parser):
    """Resolves defaults (quick or full) and validates; errors exit 2 via ``parser.error``."""
    base = QUICK if args.quick else FULL
    opts = dict(
        suite=args.suite or "all",
        size=args.size or base["size"],
        dtypes=args.dtypes or _csv(base["dtypes"]),
        repeats=args.repeats if args.repeats is not None else base["repeats"],
        min_sample_s=(args.min_sample_ms if args.min_sample_ms is not None
                      else base["min_sample_ms"]) / 1e3,
        cases=args.cases or base["cases"],
        neurons=args.neurons or ["lif"],
        threads=args.threads,
    )
    unknown = [n for n in opts["neurons"] if n not in nr.NEURONS]
    if unknown:
        parser.error(f"--neurons: unknown {', '.join(unknown)} (choose from "
                     f"{', '.join(nr.NEURONS)})")
    for n in opts["neurons"]:
        if n == "adex" and not (nr.EXAMPLES / "adex.py").is_file():
            parser.error(f"--neurons: adex is the step of {nr.EXAMPLES / 'adex.py'}, which "
                         "is not here (it ships with a source checkout, not the wheel)")
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


def _ceiling_line(report, rows) -> str:
    """The ceiling kernels the rows are compared with, one per (kernel, dtype, size)."""
    used = {}
    for r in rows:
        for op in r["ceiling"].split("+"):
            c = ceiling_for(report["copy"], op, r["dtype"], r["elements"])
            used[c["op"], c["dtype"], c["elements"]] = c
    return ", ".join(f"{op} {d} {n:,}: {c['gbps']:.1f} GB/s"
                     for (op, d, n), c in sorted(used.items()))


def format_table(report: dict) -> str:
    """The terminal table: one line per row, grouped by suite."""
    lines = []
    sections = [("elementwise", None)] + [("neurons", op) for op in dict.fromkeys(
        r["op"] for r in report["rows"] if r["suite"] == "neurons")]
    for suite, op in sections:
        rows = [r for r in report["rows"] if r["suite"] == suite and op in (None, r["op"])]
        if not rows:
            continue
        title = ("elementwise: fire(v, 0.5, Shape()) at default parameters" if op is None
                 else f"neurons: multi-step {nr.NEURONS[op].title}, loss through s and the "
                      "final state")
        lines.append(f"\n## {title}")
        lines.append("# %ceil: of the streaming kernels with the row's reads and writes per "
                     "element (1r1w: x + 1, 2r1w: a + b; one after the other where the row "
                     "counts two passes), at its size, timed in turns with it, fastest "
                     f"sample. Measured in this run: {_ceiling_line(report, rows)}")
        if suite == "neurons":
            lines.append(f"# x base: speed-up over the best plain-JAX lax.scan "
                         f"({rows[0]['baseline']}) of the same case and mode; resid B: bytes "
                         "per neuron-step kept for the backward beyond x")
            extra, first = " x base  resid B", "case"
        else:
            extra, first = f" {'x ref':>6}", "shape"
        lines.append(f"{first:<24} {'dtype':<8} {'mode':<7} {'backend':<10} {'ms':>9} "
                     f"{'min..max':>19} {'elem/s':>8} {'GB/s':>8} {'%ceil':>6}{extra}")
        prev = None
        for r in rows:
            key = (r["shape"], r["dtype"])
            if prev is not None and key != prev:
                lines.append("")
            prev = key
            line = (f"{r['shape']:<24} {r['dtype']:<8} {r['mode']:<7} {r['backend']:<10} "
                    f"{r['ms']:9.3f} {r['ms_min']:9.3f}..{r['ms_max']:<8.3f} "
                    f"{_fmt_rate(r['elements_per_s']):>8} {r['gbps']:8.2f} "
                    f"{r['pct_copy']:5.1f}%")
            if suite == "neurons":
                resid = r.get("residual_bytes_per_step")
                line += (f"  {r['speedup_vs_baseline']:5.2f}"
                         + (f"  {resid:7.3f}" if resid is not None else ""))
            elif r["backend"] != "reference" and "speedup_vs_reference" in r:
                line += f" {r['speedup_vs_reference']:6.2f}"
            lines.append(line.rstrip())
    return "\n".join(lines)


def plot_report(report: dict, path: str) -> str:
    """A chart of the report's figures: GB/s per row, grouped by backend, the copy dashed."""
    from spikefuse.plot import _matplotlib  # the same lazy import and install hint

    Figure, Canvas = _matplotlib()
    panels = []  # (title, rows)
    for suite in ("elementwise", "neurons"):
        rows = [r for r in report["rows"] if r["suite"] == suite]
        for op in dict.fromkeys(r["op"] for r in rows) if suite == "neurons" else (None,):
            for mode in dict.fromkeys(r["mode"] for r in rows):
                panels.append((suite, mode, [r for r in rows if r["mode"] == mode
                                             and op in (None, r["op"])]))
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
            sizes = {r["elements"] for r in rows if r["dtype"] == d}
            if sizes:  # the highest ceiling of the panel's sizes
                gbps = max(ceiling_for(report["copy"], "1r1w", d, n)["gbps"] for n in sizes)
                ax.axhline(gbps, color=f"C{len(backends) + k}", linestyle="--", linewidth=1,
                           label=f"copy (x + 1) {d}")
        labels = [s if len(dtypes) == 1 else f"{s}\n{d}" for s, d in groups]
        ax.set_xticks(range(len(groups)), labels, rotation=45 if suite == "elementwise" else 0,
                      ha="right" if suite == "elementwise" else "center", fontsize=8)
        ax.set_ylabel("GB/s (bytes counted)")
        what = "fire" if suite == "elementwise" else rows[0]["op"].upper()
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
    report: dict[str, Any] = dict(meta=dict(meta, command=command, options={
        k: v for k, v in opts.items() if k != "cases"}, neuron_cases=opts["cases"]),
        copy=[], rows=[], notes=[])
    if opts["kernel_backend"] == "interpret":
        report["notes"].append("'interpret' runs the Pallas kernels interpreted: its timings "
                               "say nothing about kernel speed")
    run_ew = opts["suite"] in ("all", "elementwise")
    run_nr = opts["suite"] in ("all", "neurons")
    ew_backends = opts["backends"]
    ew_cases = ew.cases(opts["shapes"], opts["dtypes"], opts["size"]) if run_ew else []
    total = len(ew_cases) * len(ew_backends) * len(opts["modes"])
    if run_nr:
        total += sum(len(opts["cases"]) * len(opts["dtypes"]) * len(nr.MODES)
                     * len(nr.row_labels(opts["kernel_backend"], n)) for n in opts["neurons"])
    bar = _Progress(total, progress)
    try:
        if run_ew:
            report["rows"] += ew.run(ew_cases, ew_backends, modes=opts["modes"],
                                     copy=report["copy"], samples=opts["repeats"],
                                     min_sample_s=opts["min_sample_s"], threads=opts["threads"],
                                     progress=bar, meta=row_meta)
        for model in opts["neurons"] if run_nr else ():
            compiled = nr.compile_all_jobs(opts["cases"], opts["dtypes"], opts["kernel_backend"],
                                           threads=opts["threads"], model=model)
            report["rows"] += nr.time_all(compiled, opts["cases"], opts["dtypes"],
                                          opts["kernel_backend"], copy=report["copy"],
                                          samples=opts["repeats"],
                                          min_sample_s=opts["min_sample_s"], progress=bar,
                                          meta=row_meta, model=model)
    finally:
        bar.close()
    report["copy"] = best_ceilings(report["copy"])  # each case timed its ceiling kernels
    for r in report["rows"]:  # each row against the best copy of its size in the whole run
        r["pct_copy"] = pct_of_ceiling(r, report["copy"])
    report["meta"]["seconds"] = time.perf_counter() - t0
    return report


def _check_finite(report):
    bad = [r for r in report["rows"] if not (math.isfinite(r["ms"]) and r["ms"] > 0)]
    if bad:
        report["notes"].append(f"{len(bad)} rows with a non-positive or non-finite time")


def bench_models(opts: dict, model_names, memory_Ts, *, progress: bool = False,
                 command: str = "") -> dict:
    """Runs the model suite and the memory sweep; returns the report {meta, rows, sweep}."""
    t0 = time.perf_counter()
    meta = machine_info()
    row_meta = {k: meta[k] for k in ("device", "jax", "commit")}
    table = md.QUICK_MODELS if opts["quick"] else md.MODELS
    models = [table[n] for n in model_names]
    kernel = opts["kernel_backend"]
    braintools = "braintools" in opts["backends"]
    report: dict[str, Any] = dict(meta=dict(meta, command=command, options=dict(
        quick=opts["quick"], repeats=opts["repeats"], min_sample_s=opts["min_sample_s"],
        backends=opts["backends"], models=model_names, memory_T=list(memory_Ts))),
        rows=[], sweep=[], notes=[])
    if kernel == "interpret":
        report["notes"].append("'interpret' runs the Pallas kernels interpreted: the fused "
                               "rows' times and XLA memory say nothing about the kernels")
    elif kernel is None:
        report["notes"].append(
            "fused rows: no kernel backend here (the Pallas kernels need a GPU): not run; "
            "what their backward keeps is counted (traced)" + (
                "" if opts["quick"] else "; XLA's account is of the step compiled with the "
                "kernels interpreted"))
    bar = _Progress(len(models) * len(md.available_variants(kernel, braintools)), progress)
    try:
        report["rows"] = md.run(models, kernel, samples=opts["repeats"],
                                min_sample_s=opts["min_sample_s"], threads=opts["threads"],
                                braintools=braintools, progress=bar, meta=row_meta,
                                capacity=not opts["quick"])
    finally:
        bar.close()
    if memory_Ts:
        report["sweep"] = md.memory_sweep(table["long"], memory_Ts, kernel,
                                          threads=opts["threads"])
    gpu_names = [n for n in model_names if n in ("mlp", "conv")]
    if opts["quick"] and gpu_names:  # the GPU sizes, compiled here and not run
        report["gpu_sizes"] = md.gpu_size_memory(gpu_names, kernel, threads=opts["threads"])
        # ... and for an H200, XLA:GPU's account with the kernels compiled, where jax's CUDA
        # plugin is installed and no GPU is here (on one, the rows above are its account)
        reason = "a GPU is here" if on_accelerator() else aot.unavailable_reason("h200")
        if reason:
            report["notes"].append(f"the GPU sizes not compiled for an H200: {reason}")
        else:
            report["gpu_sizes"] += md.gpu_size_memory(gpu_names, kernel, target="h200",
                                                      threads=opts["threads"])
    report["targets"] = md.targets(report["rows"], report.get("gpu_sizes"))
    report["meta"]["seconds"] = time.perf_counter() - t0
    return report


def _run_models(args, opts, parser) -> int:
    bad = [flag for flag, given in (("--suite", args.suite), ("--shapes", args.shapes),
                                    ("--size", args.size), ("--cases", args.cases),
                                    ("--modes", args.modes), ("--dtypes", args.dtypes),
                                    ("--neurons", args.neurons))
           if given is not None]
    if bad:
        parser.error(f"--models times float32 training steps; {', '.join(bad)} apply to the "
                     "kernel suites")
    unknown = [m for m in args.models if m not in md.MODELS]
    if unknown or not args.models:
        parser.error(f"--models: unknown {', '.join(unknown) or 'empty list'} "
                     f"(choose from {', '.join(md.MODELS)})")
    memory_Ts = md.MEMORY_TS if args.memory_T is None else args.memory_T
    try:
        md._optax()
    except ImportError as err:
        print(f"error: --models: {err}", file=sys.stderr)
        return 2
    meta_line = machine_info()
    print(f"# spikefuse bench --models | {meta_line['date']} | {meta_line['device']} "
          f"({meta_line['platform']}) | jax {meta_line['jax']} | commit {meta_line['commit']}")
    print(f"# models {','.join(args.models)} ({'quick' if args.quick else 'full'} sizes) | "
          f"kernels: {opts['kernel_backend'] or 'none here'} | {opts['repeats']} repeats "
          "(median)", flush=True)
    report = bench_models(dict(opts, quick=args.quick), args.models, memory_Ts,
                          progress=not args.no_progress and sys.stdout.isatty(),
                          command="python -m spikefuse bench " + " ".join(args.argv or []))
    print(md.format_table(report["rows"], report["sweep"], report.get("gpu_sizes"),
                          report["targets"]))
    for note in report["notes"]:
        print("# note:", note)
    print(f"# {len(report['rows'])} rows, {len(report['sweep'])} sweep points in "
          f"{report['meta']['seconds']:.1f} s")
    if args.json:
        _write_json(args.json, report)
    if args.plot:
        if not report["sweep"]:
            print("error: --plot draws the memory sweep; --memory-T gave no T", file=sys.stderr)
            return 2
        print(f"# wrote {md.plot_memory(report['sweep'], args.plot, report['meta'])}")
        if any("fits" in r for r in report["rows"] + report.get("gpu_sizes", [])):
            stem, ext = os.path.splitext(args.plot)
            print("# wrote " + md.plot_memory_vs_batch(
                report["rows"], report.get("gpu_sizes"), f"{stem}-batch{ext or '.png'}",
                report["meta"]))
    return 0


def _write_json(path, report):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"# wrote {path}")


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
    if args.models is not None:
        return _run_models(args, opts, parser)
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
        _write_json(args.json, report)
    if args.plot:
        print(f"# wrote {plot_report(report, args.plot)}")
    return 0
