"""Multi-host training with real processes: docs/scaling.md's launch recipe, run as written.

``examples/multihost.py`` (shown verbatim in docs/scaling.md) trains the data-parallel LIF
model of the single-host example after ``jax.distributed.initialize``. Here it runs as
**2 processes on 127.0.0.1 with 2 simulated CPU devices each** (the docs' launch commands,
on a free port), and as 1 process with 4 devices (the same script, ``num_processes=1``),
once with the reference backend and once with the GPU kernels interpreted. The two
placements must give the same losses over the 40 steps, the same final weights and the same
gradients (to f32 rounding), each process must hold only its half of the batch, and the
compiled step must move no activations between devices: no all-gather, all-to-all or
collective-permute, only the all-reduce of the weight gradients.

Bounded: the coordinator port comes from a fixed range on 127.0.0.1 (and binds there only);
every child has a timeout; on any failure every child still running is killed.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "scaling.md"
SCRIPT = ROOT / "examples" / "multihost.py"
PORTS = range(29731, 29831)  # searched on 127.0.0.1 only, from a place set by version and pid
TIMEOUT_S = 120  # per launch, all its processes together

# Runs the example unchanged (runpy), then records what the test compares.
HARNESS = """
import re, runpy, sys
import numpy as np
script, out = sys.argv[1], sys.argv[2]
sys.argv = [script, *sys.argv[3:]]
ns = runpy.run_path(script, run_name="__main__")
import jax
with jax.set_mesh(ns["mesh"]):
    args = ns["params"], ns["x_seq"], ns["labels"]
    grads = jax.jit(jax.grad(ns["loss_fn"]))(*args)
    jaxpr = str(jax.make_jaxpr(ns["loss_fn"])(*args))
hlo = ns["hlo"]
np.savez(out, losses=np.asarray(ns["losses"]),
         **{"grad_" + k: np.asarray(v) for k, v in grads.items()},
         **{"param_" + k: np.asarray(v) for k, v in ns["params"].items()},
         counts=np.asarray([hlo.count(op) for op in
                            ("all-gather", "all-to-all", "collective-permute", "all-reduce")]),
         topology=np.asarray([jax.process_count(), jax.device_count(), jax.local_device_count()]),
         local_batch=np.asarray(sorted(i for s in ns["x_seq"].addressable_shards
                                       for i in range(*s.index[1].indices(128)))),
         kernel_backends=np.asarray(sorted(set(re.findall(r"backend='(\\w+)'", jaxpr))), dtype=str))
"""


def _recipe() -> tuple[dict[str, str], list[list[str]], str, str]:
    """The docs' launch commands: their environment, each process's argv, the port, and
    what the docs say the script prints."""
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"<!-- multihost-launch:start -->\s*```bash\n(.*?)```\s*"
                      r"<!-- multihost-launch:end -->", text, re.S)
    assert block, "docs/scaling.md lost its multi-host launch recipe"
    env, argvs = {}, []
    for line in block.group(1).splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            env.update(word.split("=", 1) for word in words[1:])
        elif words[:1] == ["python"]:
            argvs.append([w for w in words[1:] if w != "&"])
        else:
            assert words in ([], ["wait"]), f"unexpected line in the recipe: {line!r}"
    ports = {argv[1].rsplit(":", 1)[1] for argv in argvs}
    assert len(ports) == 1 and len(argvs) == 2, argvs
    claim = re.search(r"Each process prints `process 0 of 2: (loss [^`]*)`", text)
    assert claim, "docs/scaling.md lost the line saying what the recipe prints"
    return env, argvs, ports.pop(), claim.group(1)


def _free_port(taken: tuple[int, ...] = ()) -> int:
    # Two test runs at once must not both find the same port before either binds it: CI runs
    # both interpreters side by side, so each Python minor version searches its own half of
    # the range (pid-adjacent runs once collided there, when the search started at the pid);
    # within it, the pid spreads other concurrent runs.
    half = len(PORTS) // 2
    start = (sys.version_info.minor % 2) * half + os.getpid() % (half // 2)
    for port in (p for p in [*PORTS[start:], *PORTS[:start]] if p not in taken):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail(f"no free port in {PORTS} on 127.0.0.1")


def _launch(runs, tmp_path):
    """Starts one process per (argv, env), all at once; returns each one's recorded results
    and output (or fails, having killed every process still running)."""
    procs, outs = [], []
    try:
        for i, (argv, env) in enumerate(runs):
            out = tmp_path / f"{i}.npz"
            log = open(tmp_path / f"{i}.log", "w+")
            procs.append((subprocess.Popen(
                [sys.executable, "-c", HARNESS, str(ROOT / argv[0]), str(out), *argv[1:]],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True), log))
            outs.append(out)
        deadline = time.monotonic() + TIMEOUT_S
        for proc, _ in procs:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
        logs = []
        for proc, log in procs:
            log.seek(0)
            logs.append(log.read())
            assert proc.returncode == 0, "a process failed:\n" + "\n---\n".join(
                text[-5000:] for text in logs)
        return [dict(np.load(out)) for out in outs], logs
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


@pytest.mark.parametrize("backend", ["reference", "interpret"])
def test_two_processes_train_as_one(backend, tmp_path):
    env_doc, argvs, doc_port, claim = _recipe()
    port = _free_port()
    port, single_port = str(port), str(_free_port((port,)))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    base.update({k: v.replace(doc_port, port) for k, v in env_doc.items()},
                SPIKEFUSE_BACKEND=backend, PYTHONPATH=str(ROOT))
    assert base["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
    assert base["JAX_COORDINATOR_BIND_ADDRESS"] == f"127.0.0.1:{port}"  # loopback only
    two = [[a.replace(doc_port, port) for a in argv] for argv in argvs]
    assert [argv[1:] for argv in two] == [[f"127.0.0.1:{port}", "2", "0"],
                                          [f"127.0.0.1:{port}", "2", "1"]]
    one = [two[0][0], f"127.0.0.1:{single_port}", "1", "0"]  # the same script, one process
    one_env = dict(base, XLA_FLAGS="--xla_force_host_platform_device_count=4",
                   JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{single_port}")

    (single, *pair), (_, *logs) = _launch([(one, one_env), *((a, base) for a in two)],
                                          tmp_path)

    assert list(single["topology"]) == [1, 4, 4]
    kernels = ["interpret"] if backend == "interpret" else []
    for rank, (result, log) in enumerate(zip(pair, logs)):
        assert list(result["topology"]) == [2, 4, 2]
        # Each process holds the two quarters of the batch its own devices own.
        assert list(result["local_batch"]) == list(range(64 * rank, 64 * rank + 64))
        assert list(result["kernel_backends"]) == kernels == list(single["kernel_backends"])
        gathers, all_to_all, permutes, all_reduce = result["counts"]
        assert (gathers, all_to_all, permutes) == (0, 0, 0), result["counts"]
        assert all_reduce > 0  # the gradients are summed across the two processes
        assert f"process {rank} of 2: {claim}" in log  # as the docs say
        for key in single:
            if key.startswith(("losses", "grad_", "param_")):
                np.testing.assert_allclose(result[key], single[key], rtol=1e-5, atol=1e-7,
                                           err_msg=f"{key}, process {rank}")
    assert single["losses"][-1] < 0.5 * single["losses"][0]  # it trains
