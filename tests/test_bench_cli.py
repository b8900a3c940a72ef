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
    # 2 shapes x backends x 4 modes; 1 case x 2 modes x (scan-u1/8/32 + jax-u1/8/32).
    assert len(ew_rows) == 2 * len(backends) * len(ew.MODES)
    assert {r["shape"] for r in ew_rows} == {"Sigmoid", "Arctan"}
    assert {r["backend"] for r in ew_rows} == backends
    assert len(nr_rows) == 2 * 6 and {r["backend"] for r in nr_rows} == {
        "scan-u1", "scan-u8", "scan-u32", "jax-u1", "jax-u8", "jax-u32"}
    for r in report["rows"]:
        for key in ("ms", "ms_min", "ms_max", "elements_per_s", "gbps", "pct_copy",
                    "speedup_vs_reference"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r)
        assert r["ms_min"] <= r["ms"] <= r["ms_max"]
        for key in ("device", "jax", "commit", "dtype", "mode", "op"):
            assert r[key], key  # every row self-describing
    for c in report["copy"]:
        assert math.isfinite(c["gbps"]) and c["gbps"] > 0


def test_neuron_speedups_are_against_the_best_plain_jax_row(tiny_run):
    report, _ = tiny_run
    for mode in ("fwd", "fwd+bwd"):
        group = [r for r in report["rows"] if r["suite"] == "neurons" and r["mode"] == mode]
        best = min(r["ms"] for r in group if r["backend"].startswith("jax-"))
        for r in group:
            assert r["speedup_vs_best_jax"] == pytest.approx(best / r["ms"])
        assert max(r["speedup_vs_best_jax"] for r in group if r["backend"].startswith("jax-")) \
            == pytest.approx(1.0)


def test_neuron_rows_show_the_residual_bytes_per_step(tiny_run, capsys):
    """T=8 x 64 f32: the reference scan keeps two f32 arrays per step (8 B), the plain-JAX
    scan three (12 B), plus a few scalars."""
    report, _ = tiny_run
    scalars = 64 / (8 * 64)
    for r in report["rows"]:
        if r["suite"] != "neurons":
            continue
        if r["mode"] == "fwd":
            assert "residual_bytes_per_step" not in r
        elif r["backend"].startswith("scan-"):
            assert 8.0 <= r["residual_bytes_per_step"] <= 8.0 + scalars
        else:
            assert 12.0 <= r["residual_bytes_per_step"] <= 12.0 + scalars


# The kernels each row's ceiling is timed with, written out: fwd reads and writes one array,
# bwd reads two and writes one, fwd+bwd and fwd;bwd are both passes (1r1w then 2r1w).
CEILING_KERNELS = {("elementwise", "fwd"): ["1r1w"], ("elementwise", "bwd"): ["2r1w"],
                   ("elementwise", "fwd+bwd"): ["1r1w", "2r1w"],
                   ("elementwise", "fwd;bwd"): ["1r1w", "2r1w"],
                   ("neurons", "fwd"): ["1r1w"], ("neurons", "fwd+bwd"): ["1r1w", "2r1w"]}
ARRAYS = {"1r1w": 2, "2r1w": 3}


def test_each_row_is_held_against_the_best_kernels_of_its_own_size(tiny_run):
    report, _ = tiny_run
    copy = report["copy"]
    keys = [(c["op"], c["dtype"], c["elements"]) for c in copy]
    assert len(set(keys)) == len(keys)  # the best of each kept, once
    for c in copy:  # from the fastest sample
        assert c["bytes"] == ARRAYS[c["op"]] * 4 * c["elements"]
        assert c["gbps"] == pytest.approx(c["bytes"] / (c["ms_min"] / 1e3) / 1e9)
    for r in report["rows"]:
        recs = []
        for op in CEILING_KERNELS[r["suite"], r["mode"]]:
            same = [c for c in copy if (c["op"], c["dtype"], c["elements"]) ==
                    (op, r["dtype"], r["elements"])]
            assert len(same) == 1, (op, r)  # measured at exactly the row's size
            recs += same
        ceiling = sum(c["bytes"] for c in recs) / sum(c["ms_min"] / 1e3 for c in recs) / 1e9
        assert r["pct_copy"] == pytest.approx(100 * r["gbps"] / ceiling)


def test_neurons_option_times_every_built_in_and_the_adex_step(tmp_path, capsys):
    """--neurons if,lif,plif,alif,adex with the fused kernels (interpreted, so the fused
    rows exist on a CPU): each neuron's rows, its bytes per neuron-step for its m state
    leaves, and its speed-ups against its own best plain-JAX row."""
    from spikefuse.kernels import scan

    js = tmp_path / "neurons.json"
    assert cli.main(["bench", "--suite", "neurons", "--neurons", "if,lif,plif,alif,adex",
                     "--cases", "5x40", "--dtypes", "float32", "--backends",
                     "reference,interpret", "--repeats", "1", "--min-sample-ms", "0",
                     "--no-progress", "--json", str(js)]) == 0
    table = capsys.readouterr().out
    rows = json.loads(js.read_text())["rows"]
    assert list(dict.fromkeys(r["op"] for r in rows)) == ["if", "lif", "plif", "alif", "adex"]
    T, N = 5, 40
    n_ck = scan.num_checkpoints(T, scan.default_config(T, N, "float32").chunk)
    for r in rows:
        m = 2 if r["op"] in ("alif", "adex") else 1
        want = T * N * 8 + m * N * 8  # x in, spikes out (f32); per leaf: initial and final
        if r["mode"] == "fwd+bwd":  # checkpoints twice; bwd x, ds, dx; per-leaf terms
            want += 2 * m * n_ck * N * 4 + T * N * 12 + m * N * 12
        assert r["bytes"] == want, r
        group = [g for g in rows if (g["op"], g["mode"]) == (r["op"], r["mode"])]
        prefix = "jax-" if r["op"] == "lif" else "scan-"
        best = min(g["ms"] for g in group if g["backend"].startswith(prefix))
        assert r["speedup_vs_baseline"] == pytest.approx(best / r["ms"])
        assert r["baseline"] == prefix + "u*"
    assert {r["backend"] for r in rows if r["op"] == "alif"} == {
        "fused", "scan-u1", "scan-u8", "scan-u32"}  # plain-JAX rows are LIF's
    for title in ("IF (hard", "LIF (tau=2", "PLIF", "ALIF", "AdEx"):
        assert title in table


def test_png_opens(tiny_run):
    _, png = tiny_run
    with open(png, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    img = matplotlib.image.imread(png)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200


def test_table_printed(tmp_path, capsys):
    assert cli.main(TINY[:1] + ["--suite", "elementwise"] + TINY[2:]) == 0
    out = capsys.readouterr().out
    assert "%ceil" in out and "1r1w" in out and "Sigmoid" in out and "Arctan" in out
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
    ["--neurons", "hodgkin_huxley"],
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
