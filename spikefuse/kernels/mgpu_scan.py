"""Multi-step scan kernels for Mosaic GPU (Pallas): a neuron's forward and BPTT backward.

The same contract, call signatures, data layout and kernel bodies as the Triton kernels
(`scan`): a flat step ``step(state, xs, params) -> (outs, new_state)``, ``[T, N]`` per-step
and ``[N]`` / ``[1]`` per-neuron operands, time in chunks of K steps (K row loads issued
together, then K dependent steps in registers), checkpoints of every state leaf at each
chunk boundary, a backward that recomputes a chunk from its checkpoint and runs ``jax.vjp``
of the step (`scan.step_vjp`) backwards. The bodies are `scan`'s own (`scan.forward`,
`scan.backward`); this module plugs in how a CTA reaches memory and how a kernel launches
(`scan.Family`). See `scan`'s docstring for the bytes moved per neuron-step (the same here).

What differs from Triton
------------------------
* Launch: ``plgpu.kernel`` over a 1-D grid of ``cdiv(N, block)`` CTAs, one warpgroup (128
  threads) each, one neuron per thread by default (`mgpu_launch`); refs are the whole arrays
  in global memory, rows are read and written directly (``ref[t, pl.ds(start, block)]``:
  global memory <-> registers, no shared memory, no TMA), so every architecture Mosaic GPU
  targets runs them (sm_80, sm_90, sm_100).
* Ragged neuron tails without masks (Mosaic GPU has none): the last CTA's block is moved back
  to end at N (``start = min(i * block, N - block)``) and overlaps its neighbour; overlapped
  neurons are computed twice, identically (no value crosses neurons), and written twice with
  the same values. The block shrinks to the largest multiple of 128 not above N; fewer than
  128 neurons are padded to 128 (zeros, cut from the results).
* A checkpoint store that must not happen (the last chunk's) is skipped with ``pl.when``
  instead of a store mask.
* Kernel bodies go through `mgpu_elementwise.lowerable` (calls inlined, ``pow`` and float
  ``rem`` rewritten; Mosaic GPU in jax 0.10/0.11 cannot lower a ``custom_jvp``, and the
  spike inside every step is one).

``interpret``: ``False`` compiled, a ``plgpu.InterpretGPUParams`` in Mosaic GPU interpret
mode, ``True`` Pallas' generic interpreter (``backend="interpret_mgpu"``); see
`mgpu_elementwise`. Indices are int32 (under ``jax_enable_x64`` too): T * N must stay below
2**31.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax.numpy as jnp
from jax.experimental import pallas as pl

from spikefuse.kernels import mgpu_launch, scan
from spikefuse.kernels.mgpu_elementwise import Interpret, interpret_mode, launch, lowerable
from spikefuse.kernels.mgpu_launch import LANES
from spikefuse.kernels.scan import cells, num_checkpoints
from spikefuse.kernels.sharding import _varying

__all__ = ["MGPU", "MgpuScanConfig", "cells", "check_size", "default_config", "num_checkpoints",
           "resolve_config", "scan_backward", "scan_forward"]

_INDEX_LIMIT = 2**31
_MAX_CHUNK = 8  # see `default_config`


@dataclasses.dataclass(frozen=True)
class MgpuScanConfig:
    """Launch configuration of the Mosaic GPU scan kernels.

    Attributes:
      chunk: K, time steps per chunk (rows loaded together) and the checkpoint interval.
      block: neurons per CTA, a positive multiple of 128, or None for the architecture's
        (`mgpu_launch`, at launch); cut to the largest multiple of 128 not above N.
      prefetch: issue the next chunk's loads before computing the current one; None: when
        fewer CTAs than the architecture's target run long time loops (T >= 2K).
    """

    chunk: int
    block: int | None = None
    prefetch: bool | None = None

    def __post_init__(self):
        if not (isinstance(self.chunk, int) and 1 <= self.chunk <= 128):
            raise ValueError(f"chunk must be an int in [1, 128], got {self.chunk}")
        if self.block is not None and not (isinstance(self.block, int) and self.block > 0
                                           and self.block % LANES == 0):
            raise ValueError(f"block must be None or a positive multiple of {LANES}, got "
                             f"{self.block}")
        if self.prefetch is not None and not isinstance(self.prefetch, bool):
            raise ValueError(f"prefetch must be None or a bool, got {self.prefetch!r}")


def default_config(T: int, N: int, dtype) -> MgpuScanConfig:
    """The configuration for ``T`` steps of ``N`` neurons: K from `scan.default_config`, at
    most 8; block and prefetch left to the architecture at launch (`resolve_config`).

    Why at most 8: a chunk is unrolled into the kernel body (K row loads, then K steps; the
    backward also recomputes them and runs K steps of ``jax.vjp``), and Mosaic GPU's layout
    inference takes time that grows about quadratically with the body. Exporting a two-state
    step's forward and backward for cuda (CPU, jax 0.12) took 1.2 s at K = 4, 3.0 s at K = 8
    and 28 s at K = 32 (the Triton heuristic's K for small N and long T, whose loads in
    flight K = 8 with prefetch still keeps at 16 rows). Not measured on a GPU.
    """
    return MgpuScanConfig(chunk=min(_MAX_CHUNK, scan.default_config(T, N, dtype).chunk))


def resolve_config(config: MgpuScanConfig, T: int, N: int, dtype) -> MgpuScanConfig:
    """``config`` with block and prefetch filled in for the architecture being compiled for
    (`mgpu_launch.for_arch`) and cut to N; a value the caller gave is kept (but cut to N).

    Example:
      >>> resolve_config(MgpuScanConfig(chunk=8), 32, 1 << 22, "float32")
      MgpuScanConfig(chunk=8, block=128, prefetch=False)
    """
    arch = mgpu_launch.for_arch()
    block = config.block
    if block is None:
        narrow = (jnp.dtype(dtype).itemsize < 4
                  and pl.cdiv(N, arch.scan_block_narrow) >= arch.target_ctas)
        block = arch.scan_block_narrow if narrow else arch.scan_block
    block = max(LANES, min(block, N // LANES * LANES))
    prefetch = config.prefetch
    if prefetch is None:
        prefetch = pl.cdiv(N, block) < arch.target_ctas and T >= 2 * config.chunk
    return MgpuScanConfig(chunk=config.chunk, block=block, prefetch=prefetch)


def check_size(T: int, N: int, config: MgpuScanConfig) -> None:
    """Raises ValueError unless ``[T, N]`` can be indexed with int32."""
    del config
    if T * max(N, LANES) >= _INDEX_LIMIT:
        raise ValueError(
            f"x_seq has T * N = {T} * {N} elements; the scan kernels index with int32 and "
            f"support fewer than 2**31 (use backend='reference' for larger inputs)")


class _Rows:
    """Row access of one CTA to its block of whole ``[rows, N]`` / ``[N]`` refs in global
    memory (`scan._Rows`'s interface, without masks: see the module docstring)."""

    def __init__(self, block, n, cdt, *, index):
        self.block, self.cdt = block, cdt
        self.start = jnp.minimum(index() * block, n - block).astype(jnp.int32)
        self.zero = jnp.zeros((block,), cdt)

    def _at(self, t):
        window = pl.ds(self.start, self.block)
        return window if t is None else (jnp.asarray(t, jnp.int32), window)

    def load(self, ref, t=None, valid=None):
        # `valid` False only for rows the caller clamped into bounds and does not use.
        del valid
        if ref is None:  # an absent operand (a zero cotangent)
            return self.zero
        value = ref[self._at(t)].astype(self.cdt)
        if _varying(value):
            # Inside a shard_map, plgpu.kernel's refs keep the operands' varying mesh axes,
            # but the kernel is traced without tracking them, so every computed value has
            # none: a loaded cotangent would then not match its output in `step_vjp`'s VJP.
            # A multiplication by one (exact) is a value without them.
            value = value * 1
        return value

    def store(self, ref, value, t=None, valid=None):
        def write():
            ref[self._at(t)] = value.astype(ref.dtype)

        if valid is None:
            write()
        else:
            pl.when(valid)(write)

    def vec(self, ref, scalar):
        if scalar:
            return jnp.full((self.block,), ref[0], self.cdt)
        return self.load(ref)


def _launch(kernel, operands, out_shape, N, config, interpret, name):
    def body(*refs, index):  # the CTA index is the launch's (see `mgpu_elementwise.launch`)
        return kernel(*refs, rows=functools.partial(_Rows, index=index))

    name = name.replace("spikefuse_", "spikefuse_mgpu_", 1)  # spikefuse_mgpu_scan_fwd, _bwd
    return launch(body, operands, out_shape, pl.cdiv(N, config.block), interpret, name)


MGPU = scan.Family(rows=_Rows, launch=_launch, lowerable=lowerable)


# -- padding fewer than 128 neurons to one block -------------------------------------------
def _pad(a, N, lead):
    """``a`` ([rows, N] when ``lead``, else [N] or a [1] scalar) padded with zeros to 128
    neurons."""
    if a is None or (not lead and a.shape[0] == 1):
        return a
    width = [(0, 0)] * a.ndim
    width[-1] = (0, LANES - N)
    return jnp.pad(a, width)


def _cut(a, N):
    return None if a is None else a[..., :N]


def _prepare(xs, init, config, interpret):
    if not xs or not init:
        raise ValueError("the scan kernels need at least one input and one state leaf")
    x = xs[0]
    if x.ndim != 2:
        raise ValueError(f"inputs must be [T, N], got shape {x.shape}")
    T, N = x.shape
    check_size(T, N, config)
    interpret = interpret_mode(interpret)
    config = resolve_config(config, T, max(N, LANES), x.dtype)
    return T, N, N < LANES, config, interpret


# -- forward ------------------------------------------------------------------------------
def scan_forward(step: Callable, xs: Sequence, init: Sequence, params: Sequence, *,
                 out_dtypes: Sequence, final_dtypes: Sequence, config: MgpuScanConfig,
                 interpret: Interpret, save_checkpoints: bool):
    """Runs ``step`` over T for N neurons in one Mosaic GPU kernel (`scan.scan_forward`'s
    contract and arguments; ``config`` a `MgpuScanConfig`, ``interpret`` as in the module
    docstring)."""
    xs, init, params = tuple(xs), tuple(init), tuple(params)
    _, N, pad, config, interpret = _prepare(xs, init, config, interpret)
    if pad:
        xs = tuple(_pad(x, N, True) for x in xs)
        init = tuple(_pad(v, N, False) for v in init)
        params = tuple(_pad(p, N, False) for p in params)
    outs, finals, cks = scan.forward(
        MGPU, step, xs, init, params, out_dtypes=out_dtypes, final_dtypes=final_dtypes,
        config=config, interpret=interpret, save_checkpoints=save_checkpoints)
    if pad:
        outs, finals, cks = (tuple(_cut(a, N) for a in group) for group in (outs, finals, cks))
    return outs, finals, cks


# -- backward -----------------------------------------------------------------------------
def scan_backward(step: Callable, xs: Sequence, init: Sequence, cks: Sequence,
                  params: Sequence, d_outs: Sequence, d_finals: Sequence, *,
                  config: MgpuScanConfig, interpret: Interpret, want_x: Sequence[bool],
                  want_init: Sequence[bool], want_params: Sequence[bool]):
    """BPTT through `scan_forward`'s computation, in one Mosaic GPU kernel
    (`scan.scan_backward`'s contract and arguments)."""
    xs, init, cks, params = tuple(xs), tuple(init), tuple(cks), tuple(params)
    _, N, pad, config, interpret = _prepare(xs, init, config, interpret)
    if pad:
        xs = tuple(_pad(x, N, True) for x in xs)
        init = tuple(_pad(v, N, False) for v in init)
        cks = tuple(_pad(c, N, True) for c in cks)
        params = tuple(_pad(p, N, False) for p in params)
        d_outs = tuple(_pad(d, N, True) for d in d_outs)
        d_finals = tuple(_pad(d, N, False) for d in d_finals)
    dxs, dinit, dparams = scan.backward(
        MGPU, step, xs, init, cks, params, d_outs, d_finals, config=config,
        interpret=interpret, want_x=want_x, want_init=want_init, want_params=want_params)
    if pad:
        dxs, dinit, dparams = (tuple(_cut(a, N) for a in group)
                               for group in (dxs, dinit, dparams))
    return dxs, dinit, dparams

