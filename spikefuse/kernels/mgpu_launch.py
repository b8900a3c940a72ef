"""Launch configuration of the Mosaic GPU kernels, per GPU architecture — the one place.

Mosaic GPU compiles for Ampere (sm_80), Hopper (sm_90) and Blackwell (sm_100, sm_120); the
architecture is the one jax compiles for at lowering time (`_compat.mosaic_gpu_arch`: the
device's compute capability, or sm_90 when no GPU is visible, e.g. ``jax.export`` on a CPU).
`ARCH_LAUNCH` holds, per architecture major version, what the kernels launch with; the
kernels (`mgpu_elementwise`, `mgpu_scan`) read it through `for_arch` and nothing else.

What every row says today, and why
----------------------------------
* Copies: direct GMEM <-> register loads and stores (``ref[t, pl.ds(start, block)]``), no
  shared memory, no TMA. They lower on every architecture (TMA copies with barriers are
  Hopper and newer only), they are what the Triton kernels do (which reach 95 % of the copy
  ceiling on an H200: 0.771 ms for LIF forward+backward at T=32 x 4M f32, bench/RESULTS.md),
  and a CTA of the scan kernels keeps K rows of loads in flight per stream either way.
  A TMA pipeline (``plgpu.emit_pipeline``) would stage blocks in shared memory: worth
  measuring on sm_90+, not worth writing blind.
* Blocks: one CTA is one warpgroup (128 threads; Mosaic GPU's register layout of a 1-D array
  spreads it over those 128 threads), so a block is a multiple of 128 elements.
  Elementwise: 32 bytes per thread per operand (1024 f32, 2048 bf16, 512 f64 elements), the
  Triton kernels' tuned value. Scan: one neuron per thread (128; 256 for 2-byte inputs when
  N is large, as the Triton heuristic puts two neurons on a thread there).
* Chunk K is not per architecture: the checkpoints it sets are part of the neuron
  primitives' output types, which every kernel family (Triton, Mosaic GPU, Mosaic TPU)
  shares, so it is `scan.default_config`'s.

**None of it is measured**: the Mosaic GPU kernels have not run on a GPU (no GPU was lent
when they were written). The rows are the same for every architecture until
``bench/gpu_run.sh`` (which times them beside the Triton kernels) says otherwise; tuning
lands here, in the table.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from spikefuse.kernels import _compat

__all__ = ["ARCH_LAUNCH", "ArchLaunch", "LANES", "current_arch", "for_arch"]

LANES = 128  # threads of one warpgroup: the granularity of a block


@dataclasses.dataclass(frozen=True)
class ArchLaunch:
    """How the Mosaic GPU kernels launch on one architecture.

    Attributes:
      copies: how blocks move between global memory and registers: ``"direct"`` (plain
        loads and stores; the only kind implemented).
      elementwise_bytes: bytes per thread per operand of an elementwise block.
      scan_block: neurons per CTA of the scan kernels (4-byte inputs, or few neurons).
      scan_block_narrow: neurons per CTA for 1- and 2-byte inputs when N is large.
      target_ctas: CTAs wanted in flight: below it, the scan kernels prefetch the next chunk
        (few, long-running CTAs are latency-bound).
    """

    copies: str
    elementwise_bytes: int
    scan_block: int
    scan_block_narrow: int
    target_ctas: int

    def __post_init__(self):
        if self.copies != "direct":
            raise ValueError(f"copies must be 'direct', got {self.copies!r}")
        for name in ("scan_block", "scan_block_narrow"):
            v = getattr(self, name)
            if not (v > 0 and v % LANES == 0):
                raise ValueError(f"{name} must be a positive multiple of {LANES}, got {v}")
        if self.elementwise_bytes < 4 or self.target_ctas < 1:
            raise ValueError("elementwise_bytes must be >= 4 and target_ctas >= 1")

    def elementwise_block(self, dtype) -> int:
        """Elements per CTA of the elementwise kernels for ``dtype``."""
        per_thread = max(1, self.elementwise_bytes // jnp.dtype(dtype).itemsize)
        return LANES * per_thread


_SAME = ArchLaunch(copies="direct", elementwise_bytes=32, scan_block=128,
                   scan_block_narrow=256, target_ctas=1024)
# Per compute-capability major version. Not tuned: the same on every architecture (see the
# module docstring) until a GPU measurement says otherwise.
ARCH_LAUNCH = {
    8: _SAME,  # Ampere (A100: 108 SMs)
    9: _SAME,  # Hopper (H100/H200: 132 SMs)
    10: _SAME,  # Blackwell datacenter (B200)
    12: _SAME,  # Blackwell consumer
}


def current_arch() -> tuple[int, int]:
    """The architecture Mosaic GPU compiles for now, ``(major, minor)``."""
    return _compat.mosaic_gpu_arch()


def for_arch(arch: tuple[int, int] | None = None) -> ArchLaunch:
    """The launch configuration for ``arch`` (default: `current_arch`); an architecture
    the table does not list gets the newest listed row below it, else the oldest row.

    Example:
      >>> from spikefuse.kernels import mgpu_launch
      >>> mgpu_launch.for_arch((9, 0)).elementwise_block("float32")
      1024
    """
    major = (current_arch() if arch is None else arch)[0]
    below = [k for k in ARCH_LAUNCH if k <= major]
    return ARCH_LAUNCH[max(below) if below else min(ARCH_LAUNCH)]
