"""``spikefuse.plot``: the shapes picture and the ``python -m spikefuse plot`` subcommand.

matplotlib is a declared test dependency (the ``test`` extra): without it these tests fail
at import rather than skip.
"""

import sys

import matplotlib.image
import numpy as np
import pytest

from spikefuse import __main__ as cli
from spikefuse.plot import plot_shapes
from spikefuse.surrogate import registry

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
G_RGB = (0x1F, 0x77, 0xB4)  # tab:blue, the colour of g
DG_RGB = (0xFF, 0x7F, 0x0E)  # tab:orange, the colour of g'
NO_G = [s.name for s in registry.SHAPES if not s.has_fun]


def _read_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    img = matplotlib.image.imread(path)  # float RGBA in [0, 1], [H, W, 4]
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    return img


def _has_colour(img, rgb, tol=12) -> bool:
    pixels = np.round(img[..., :3] * 255)
    return bool((np.abs(pixels - np.array(rgb)).max(axis=-1) <= tol).any())


def test_all_shapes_png_opens(tmp_path):
    out = tmp_path / "all.png"
    assert plot_shapes(out=out) == str(out)
    img = _read_png(out)
    height, width = img.shape[:2]
    assert width > 1500 and height > 600, img.shape  # a 6 x 3 grid at a readable size
    assert img[..., :3].std() > 0.05  # not blank
    assert _has_colour(img, G_RGB) and _has_colour(img, DG_RGB)


def test_subset_by_class_and_functional_names(tmp_path):
    out = tmp_path / "two.png"
    plot_shapes(["Sigmoid", "piecewise_quadratic"], out=out, x_range=(-2, 2))
    img = _read_png(out)
    assert img.shape[1] < 1000  # two panels, not eighteen


@pytest.mark.parametrize("name", NO_G)
def test_shapes_without_g_still_plot_g_prime(tmp_path, name):
    with pytest.raises(NotImplementedError):
        registry.get(name).surrogate_fun(np.zeros(3, np.float32))
    out = tmp_path / f"{name}.png"
    plot_shapes([name], out=out)
    img = _read_png(out)
    assert _has_colour(img, DG_RGB)  # g' is drawn
    assert not _has_colour(img, G_RGB)  # and no g (not even in the legend)


def test_unknown_name_raises_registry_error(tmp_path):
    with pytest.raises(ValueError, match="unknown surrogate 'no_such_shape'"):
        plot_shapes(["sigmoid", "no_such_shape"], out=tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("x_range", [(1.0, -1.0), (0.0, 0.0), (float("nan"), 1.0)])
def test_bad_x_range_raises(tmp_path, x_range):
    with pytest.raises(ValueError, match="x_range"):
        plot_shapes(["sigmoid"], out=tmp_path / "x.png", x_range=x_range)


def test_missing_matplotlib_says_what_to_install(tmp_path, monkeypatch):
    # A None entry in sys.modules makes the import raise ImportError, as if not installed.
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match=r'pip install "spikefuse\[plot\]"'):
        plot_shapes(["sigmoid"], out=tmp_path / "x.png")


def test_cli_plot_writes_png(tmp_path, capsys):
    out = tmp_path / "cli.png"
    assert cli.main(["plot", "--out", str(out), "arctan", "ReluGrad"]) == 0
    _read_png(out)
    assert str(out) in capsys.readouterr().out


def test_cli_plot_unknown_name_exits_2(tmp_path, capsys):
    assert cli.main(["plot", "--out", str(tmp_path / "x.png"), "bogus"]) == 2
    assert "unknown surrogate 'bogus'" in capsys.readouterr().err


def test_cli_plot_help_exits_0(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["plot", "--help"])
    assert exc.value.code == 0
    assert "--out" in capsys.readouterr().out
