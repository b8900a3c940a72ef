"""Release check: build the sdist and wheel, install the wheel where the source tree cannot
leak in, and use it there as a user would.

    python .ci/check_wheel.py [--keep DIR]

1. ``python -m build`` makes ``spikefuse-<version>.tar.gz`` and ``-py3-none-any.whl`` from
   a copy of the files git tracks (so no build output or egg-info of a working tree, which
   setuptools would read, can make up for a file the package configuration leaves out).
2. A fresh virtual environment gets the wheel (not editable; its dependencies from the
   package index, through pip's cache).
3. From a directory outside the repository, with ``python -I`` (no current directory, no
   PYTHONPATH on ``sys.path``), the installed package must: be the one in the venv; import
   every module that the repository's ``spikefuse/`` holds; contain every data file it holds
   (``py.typed``, ...); report the version the metadata has; and run
   ``python -m spikefuse bench --quick --json FILE``, writing rows of positive timings.

A module or data file missing from the wheel fails step 3 with its name. Exits non-zero on
any failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "spikefuse"

# Runs inside the fresh venv: argv[1] is a JSON list of modules, argv[2] of data files.
SMOKE = r"""
import importlib, importlib.metadata, json, os, sys
modules, data = json.loads(sys.argv[1]), json.loads(sys.argv[2])
import spikefuse
root = os.path.dirname(spikefuse.__file__)
assert root.startswith(sys.prefix), f"spikefuse imported from {root}, not the venv {sys.prefix}"
missing = []
for name in modules:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as err:
        missing.append(f"module {name} ({err})")
missing += [f"data file {f}" for f in data if not os.path.isfile(os.path.join(root, f))]
assert not missing, "not in the installed wheel: " + ", ".join(missing)
version = importlib.metadata.version("spikefuse")
assert spikefuse.__version__ == version, (spikefuse.__version__, version)
import jax.numpy as jnp
assert spikefuse.fire(jnp.array([0.0, 2.0]), 1.0).tolist() == [0.0, 1.0]
print(f"smoke: spikefuse {version} from {root}: {len(modules)} modules, data {data}")
"""


def tracked(*paths: str) -> list[str]:
    """The files git tracks under ``paths`` (relative to the repository), as in a clone."""
    out = subprocess.run(["git", "ls-files", "-z", "--", *paths], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return sorted(f for f in out.split("\0") if f and (ROOT / f).is_file())


def source_files() -> tuple[list[str], list[str]]:
    """(module names, data files relative to the package) that the repository's package has."""
    modules, data = [], []
    for path in map(Path, tracked(PACKAGE)):
        if path.suffix == ".py":
            parts = path.with_suffix("").parts
            modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
        elif path.suffix not in (".pyc", ".pyo"):
            data.append(str(path.relative_to(PACKAGE)))
    return modules, data


def run(cmd: list[str], label: str | None = None, **kwargs: Any) -> None:
    """Runs ``cmd`` (failing on a non-zero exit) and prints it, or ``label``, with its time."""
    start = time.perf_counter()
    shown = label or " ".join(map(str, cmd))
    if subprocess.run(cmd, **kwargs).returncode:
        raise SystemExit(f"wheel check failed: {shown}")
    print(f"+ {shown}  ({time.perf_counter() - start:.0f} s)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a "
                        "temporary directory, removed afterwards)")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="spikefuse-wheel-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        source, dist = work / "source", work / "dist"
        for old in (source, dist):
            shutil.rmtree(old, ignore_errors=True)
        for name in tracked("."):
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
        log = work / "build.log"
        with open(log, "w") as out:
            try:
                run([sys.executable, "-m", "build", "--outdir", str(dist), str(source)],
                    stdout=out, stderr=subprocess.STDOUT)
            except SystemExit:
                print(log.read_text()[-5000:])
                raise
        wheels, sdists = list(dist.glob("*.whl")), list(dist.glob("*.tar.gz"))
        assert len(wheels) == 1 and len(sdists) == 1, os.listdir(dist)
        print(f"built {sdists[0].name} and {wheels[0].name}")

        venv = work / "venv"
        shutil.rmtree(venv, ignore_errors=True)
        run([sys.executable, "-m", "venv", str(venv)])
        python = str(venv / "bin" / "python")
        run([python, "-m", "pip", "install", "-q", str(wheels[0])])

        outside = work / "run"  # not the repository: nothing there to import by accident
        outside.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "SPIKEFUSE_BACKEND"}
        modules, data = source_files()
        run([python, "-I", "-c", SMOKE, json.dumps(modules), json.dumps(data)],
            "import smoke test (.ci/check_wheel.py SMOKE)", cwd=outside, env=env)

        report, log = outside / "bench.json", work / "bench.log"
        with open(log, "w") as out:
            try:
                run([python, "-I", "-m", PACKAGE, "bench", "--quick", "--json", str(report)],
                    cwd=outside, env=env, stdout=out, stderr=subprocess.STDOUT)
            except SystemExit:
                print(log.read_text()[-5000:])
                raise
        rows = json.loads(report.read_text())["rows"]
        assert rows and all(r["ms"] > 0 for r in rows), "bench wrote no positive timings"
        print(f"bench --quick from the wheel: {len(rows)} rows")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"wheel check passed in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
