"""The multi-device suite: run only in its own process, on 8 simulated CPU devices.

``tests/test_sharding.py`` launches ``pytest tests/multidevice`` in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` and ``SPIKEFUSE_MULTIDEVICE=1``;
the main test run (one device) collects nothing here. The flag must be set before jax
initialises its CPU backend, hence a separate process.
"""

import os
import sys

if os.environ.get("SPIKEFUSE_MULTIDEVICE") != "1":
    collect_ignore_glob = ["test_*.py"]
else:
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    # tests/ holds the shared helpers (lowering.py).
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    import jax

    if jax.device_count() != 8:  # pragma: no cover - a misconfigured launch
        raise RuntimeError(f"the multi-device suite needs 8 devices, jax sees {jax.devices()}: "
                           "start it with XLA_FLAGS=--xla_force_host_platform_device_count=8")
