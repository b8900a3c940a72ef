"""``python -m spikefuse [demo | bench | plot]`` — the spikefuse command line.

``demo`` (the default) prints the backend that ``"auto"`` picks here, each built-in shape's
spike and surrogate derivative at a few points, and a forward+backward timing of
``spikefuse.fire`` against the plain-XLA reference. ``bench`` benchmarks every shape,
backend and neuron (``bench --help``); ``plot`` draws the shapes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import spikefuse
from spikefuse.benchmark.cli import add_bench_parser
from spikefuse.benchmark.timing import on_accelerator, time_fn
from spikefuse.kernels import dispatch
from spikefuse.plot import add_plot_parser
from spikefuse.surrogate import registry


def _time(fn: Callable[..., object], *args: object) -> float:
    """Median seconds per call (the benchmark harness's timing: bursts of calls)."""
    return time_fn(fn, args, samples=20, min_sample_s=0.01)[0]


def demo(size: int) -> None:
    """Prints the tour: the backend here, each shape at a few points, a fire timing."""
    device = jax.devices()[0]
    print(f"spikefuse {spikefuse.__version__} | jax {jax.__version__} | "
          f"device: {device.device_kind} ({jax.default_backend()})")
    picks = ", ".join(f"{op} -> {dispatch.resolve(op=op)!r}" for op in dispatch.OPS)
    print(f"backend: configured {dispatch.get_backend()!r}; here it runs {picks}\n")

    xs = jnp.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    print(f"{'shape':<24} {'H(x) at x = -1, -0.5, 0, 0.5, 1':<34} dH/dx (surrogate g')")
    for spec in registry.SHAPES:
        s = spec.cls()
        h = np.asarray(s(xs))
        g = np.asarray(jax.vmap(jax.grad(s))(xs))
        g_text = np.array2string(g, precision=4, floatmode="fixed")
        print(f"{spec.name:<24} {h.astype(int)!s:<34} {g_text}")

    key_v, key_ct = jax.random.split(jax.random.PRNGKey(0))
    v = jax.random.normal(key_v, (size,), jnp.float32)
    ct = jax.random.normal(key_ct, (size,), jnp.float32)
    surrogate = spikefuse.surrogate.Sigmoid()

    def fwd_bwd(backend: str) -> Callable[..., object]:
        def f(v: jax.Array, ct: jax.Array) -> tuple[jax.Array, jax.Array]:
            out, vjp = jax.vjp(lambda v: spikefuse.fire(v, 0.5, surrogate, backend=backend), v)
            return out, vjp(ct)[0]

        return jax.jit(f)

    label = "CPU" if jax.default_backend() == "cpu" else device.device_kind
    print(f"\nfire(v, 0.5, Sigmoid()) forward+backward on {size:,} f32 elements "
          f"({label}, median of 20):")
    ref = _time(fwd_bwd("reference"), v, ct)
    print(f"  reference (XLA): {ref * 1e3:8.3f} ms  "
          f"{5 * 4 * size / ref / 1e9:7.1f} GB/s (20 B/element)")
    if on_accelerator():  # the kernel is timed where it can run, whatever "auto" picks
        pal = _time(fwd_bwd("pallas"), v, ct)
        print(f"  pallas         : {pal * 1e3:8.3f} ms  ({ref / pal:.2f}x the reference)")
    else:
        print("  pallas         : needs a GPU or a TPU "
              "(CPU runs the reference; tests check the kernels in interpret mode)")


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``demo`` (default), ``bench`` or ``plot``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m spikefuse",
                                     description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    p_demo = sub.add_parser("demo", help="the short tour (default)")
    p_demo.add_argument("--size", type=int, default=1 << 20,
                        help="elements in the timing (default 2^20)")
    add_bench_parser(sub)
    add_plot_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "bench":
        args.argv = list(sys.argv[2:] if argv is None else argv[1:])
        return args.handler(args)
    if args.command == "plot":
        return args.handler(args)
    demo(getattr(args, "size", 1 << 20))
    return 0


if __name__ == "__main__":
    sys.exit(main())
