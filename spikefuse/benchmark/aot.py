"""Compiling for a GPU on a machine without one: XLA:GPU's account, deviceless.

jax compiles ahead of time for a GPU it does not have when it is given the device's
description (``jax.experimental.topologies.get_topology_desc(platform="cuda",
target_config=...)``) and the program is lowered with that device as the abstract mesh's
(which tells Pallas' Triton lowering the compute capability). XLA:GPU then runs its whole
pipeline — fusion, scheduling, buffer assignment, the Triton kernels compiled to cubin — so
``memory_analysis()`` is XLA:GPU's account of the program a GPU would run, with the fused
kernels as kernels (on a CPU they can only be interpreted, which copies their operands).
Nothing runs: no timing, no device peak, no autotuning (XLA picks its default GEMM and
convolution algorithms, whose workspace may differ from a tuned run's).

Needs the CUDA plugin of the installed jax (``pip install "jax[cuda12]"``; its wheels
bring ptxas) and no GPU; ``unavailable_reason`` says why it cannot run here. Used by
``bench --models --quick`` (`spikefuse.benchmark.models.gpu_size_memory`) for the training
steps at the GPU sizes, and by ``tests/test_gpu_aot.py``, which compiles the kernels for an
H200 in CI.
"""

from __future__ import annotations

import functools

import jax

__all__ = ["TARGETS", "lower", "unavailable_reason"]

# XLA's GpuTargetConfig (text proto) of an NVIDIA H200, the GPU of our measurements
# (bench/RESULTS.md): compute capability 9.0 and its per-SM limits, 132 SMs, 50 MiB of L2,
# 139.8 GiB of memory (as the device tool reports it), CUDA 12.9 and cuDNN 9 (the
# jax[cuda12] wheels). What compilation depends on is the compute capability and the limits;
# clock, bandwidth and memory size only feed XLA's cost models.
_H200 = """
gpu_device_info {
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: 4800000000000
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: 150121086976
  shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 }
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 8 }
runtime_version { major: 12 minor: 9 }
device_description_str: "NVIDIA H200"
"""
TARGETS = {"h200": _H200}


@functools.cache
def _mesh(target: str):
    from jax.experimental import topologies

    topology = topologies.get_topology_desc(platform="cuda", target_config=TARGETS[target],
                                            topology="1x1x1")
    return topologies.make_mesh(topology, (1,), ("d",))


def unavailable_reason(target: str = "h200") -> str | None:
    """Why this machine cannot compile for ``target``, or ``None`` when it can."""
    if target not in TARGETS:
        return f"unknown target {target!r} (choose from {', '.join(TARGETS)})"
    try:
        _mesh(target)
    except Exception as err:  # no CUDA plugin, or one that cannot describe a device
        return (f"cannot compile for {target} without a GPU here ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); it needs jax's CUDA plugin: "
                'pip install "jax[cuda12]"')
    return None


def lower(fn, avals, target: str = "h200"):
    """``jax.jit(fn).lower(*avals)`` for one ``target`` device, deviceless: every leaf of
    ``avals`` (arrays or ``jax.ShapeDtypeStruct``) is placed on it; ``.compile()`` the
    result for XLA:GPU's executable and ``memory_analysis()``."""
    mesh = _mesh(target)
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    placed = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                          avals)
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        return jax.jit(fn).lower(*placed)
