"""The benchmark harness behind ``python -m spikefuse bench`` and the scripts in ``bench/``.

``timing``: the timer (warm-up excluded, bursts of back-to-back calls ended by
``block_until_ready``, median and spread), the copy ceiling, parallel ahead-of-time
compilation and provenance. ``memory``: what ``jax.vjp`` keeps for the backward, XLA's
memory account, the device peak. ``elementwise``: ``fire`` for every built-in shape ×
backend × mode. ``neurons``: the multi-step LIF, fused kernels vs ``lax.scan`` (ours and an
expert's plain JAX). ``models``: whole training steps of spiking networks, every way a user
could write them. ``cli``: the ``bench`` subcommand (table, JSON, plot).
"""

from spikefuse.benchmark.timing import compile_all, copy_ceilings, git_commit, machine_info, time_fn

__all__ = ["compile_all", "copy_ceilings", "git_commit", "machine_info", "time_fn"]
