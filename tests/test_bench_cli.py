"""``python -m spikefuse bench``: a tiny in-process run writes valid JSON and a PNG; options.

matplotlib is a declared test dependency (the ``test`` extra).
"""

import json
import math

import jax
import matplotlib.image
import pytest

from spikefuse import __main__ as cli
from spikefuse.benchmark import elementwise as ew

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = ["bench", "--quick", "--size", "2^10", "--shapes", "Sigmoid,arctan", "--cases", "8x64",
        "--repeats", "2", "--min-sample-ms", "0", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    js, png = out / "bench.json", out / "bench.png"
    assert cli.main(TINY + ["--json", str(js), "--plot", str(png)]) == 0
    return json.loads(js.read_text()), png


def test_json_is_complete_and_figures_positive_finite(tiny_run, capsys):
    report, _ = tiny_run
    meta = report["meta"]
    for key in ("machine", "device", "jax", "jaxlib", "python", "commit", "date", "command"):
        assert meta[key], key
    backends = set(ew.available_backends())
    ew_rows = [r for r in report["rows"] if r["suite"] == "elementwise"]
    nr_rows = [r for r in report["rows"] if r["suite"] == "neurons"]
    # 2 shapes x backends x 4 modes; 1 case x 2 modes x scan-u1/8/32.
    assert len(ew_rows) == 2 * len(backends) * len(ew.MODES)
    assert {r["shape"] for r in ew_rows} == {"Sigmoid", "Arctan"}
    assert {r["backend"] for r in ew_rows} == backends
    assert len(nr_rows) == 2 * 3 and {r["backend"] for r in nr_rows} == {
        "scan-u1", "scan-u8", "scan-u32"}
    for r in report["rows"]:
        for key in ("ms", "ms_min", "ms_max", "elements_per_s", "gbps", "pct_copy",
                    "speedup_vs_reference"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r)
        assert r["ms_min"] <= r["ms"] <= r["ms_max"]
        for key in ("device", "jax", "commit", "dtype", "mode", "op"):
            assert r[key], key  # every row self-describing
    for c in report["copy"].values():
        assert math.isfinite(c["gbps"]) and c["gbps"] > 0


def test_png_opens(tiny_run):
    _, png = tiny_run
    with open(png, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    img = matplotlib.image.imread(png)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200


def test_table_printed(tmp_path, capsys):
    assert cli.main(TINY[:1] + ["--suite", "elementwise"] + TINY[2:]) == 0
    out = capsys.readouterr().out
    assert "copy ceiling" in out and "Sigmoid" in out and "Arctan" in out
    assert "neurons:" not in out


def test_help_exits_0(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--quick", "--suite", "--shapes", "--dtypes", "--size", "--backends", "--repeats",
                "--json", "--plot", "--no-progress", "--cases", "--modes"):
        assert opt in out


@pytest.mark.parametrize("bad", [
    ["--suite", "nope"], ["--shapes", "NoSuchShape"], ["--dtypes", "int32"],
    ["--dtypes", "float99"], ["--size", "abc"], ["--size", "0"], ["--backends", "cuda"],
    ["--cases", "8by64"], ["--modes", "sideways"], ["--repeats", "0"], ["--bogus"],
])
def test_bad_options_exit_2(bad, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--no-progress"] + bad)
    assert e.value.code == 2


@pytest.mark.skipif(ew.unavailable_reason("pallas") is None, reason="checks a CPU-only machine")
def test_pallas_on_cpu_is_an_error_not_a_fallback(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--backends", "pallas"])
    assert e.value.code == 2
    assert "needs a GPU" in capsys.readouterr().err


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
def test_pallas_is_benchmarked_on_a_gpu_and_a_tpu(monkeypatch, platform):
    """On either accelerator "pallas" is in the default table (it compiles that platform's
    kernels); the platform is faked by name, nothing runs."""
    monkeypatch.setattr(jax, "default_backend", lambda: platform)
    assert "pallas" in ew.available_backends()
    assert ew.unavailable_reason("pallas") is None


def test_demo_and_plot_still_dispatch(tmp_path):
    out = tmp_path / "s.png"
    assert cli.main(["plot", "--out", str(out), "Sigmoid"]) == 0
    assert out.exists()
