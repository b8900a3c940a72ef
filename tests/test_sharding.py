"""Launches the multi-device suite (``tests/multidevice``) on 8 simulated CPU devices.

jax fixes its device count when it starts, so the suite runs in a child pytest process
with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``; this process keeps one device.
"""

import os
import re
import subprocess
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)


def test_multidevice_suite_on_8_cpu_devices():
    env = dict(os.environ, SPIKEFUSE_MULTIDEVICE="1", JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env.pop("SPIKEFUSE_BACKEND", None)  # every test there names its backend
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
         os.path.join(TESTS, "multidevice")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"multi-device suite failed:\n{out[-20000:]}"
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 20, f"too few tests ran:\n{out[-5000:]}"
    print(out[-3000:])


def _docs_example():
    with open(os.path.join(REPO, "docs", "scaling.md"), encoding="utf-8") as f:
        text = f.read()
    block = re.search(r"<!-- scaling-example:start -->\s*```python\n(.*?)```\s*"
                      r"<!-- scaling-example:end -->", text, re.S)
    claim = re.search(r"[Ii]t prints `(loss [^`]*)`", text)
    assert block and claim, ("docs/scaling.md lost its scaling example or the line saying what "
                             "it prints")
    return block.group(1), claim.group(1)


def test_docs_scaling_example_runs_as_written(tmp_path):
    code, claim = _docs_example()
    script = tmp_path / "scaling_example.py"
    script.write_text(code)
    env = dict(os.environ, JAX_PLATFORMS="cpu", SPIKEFUSE_BACKEND="interpret",
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    printed = proc.stdout.strip().splitlines()[-1]
    first, last, gathers = re.fullmatch(
        r"loss (\d+\.\d+) -> (\d+\.\d+); all-gathers: (\d+)", printed).groups()
    assert float(last) < 0.5 * float(first)  # it trains
    assert gathers == "0"
    assert printed == claim  # and the docs say what it prints
