"""docs/migrating-spikingjelly.md against SpikingJelly's equations, written here in numpy float64.

torch and SpikingJelly are not dependencies: the oracle below re-states, independently of
spikefuse, what SpikingJelly's ``activation_based`` neurons and surrogates compute (read from
its ``neuron.py`` and ``surrogate.py``):

* ``BaseNode``: the membrane starts at ``v_reset`` (0 for a soft reset); each step charges
  (``neuronal_charge``), fires ``s = heaviside(h - v_threshold)`` with ``heaviside(x) =
  (x >= 0)``, and resets ``v = (1 - s_d) h + s_d v_reset`` (hard) or ``v = h - s_d v_threshold``
  (soft, ``v_reset=None``), ``s_d`` the spike, detached if ``detach_reset``; with
  ``step_mode='m'`` it loops over the first axis; ``store_v_seq`` keeps v after each reset.
* charges: IF ``h = v + x``; LIF ``h = v + (x - (v - v_reset)) / tau`` (``decay_input``) or
  ``h = v - (v - v_reset) / tau + x``; ParametricLIF the same with ``1/tau = sigmoid(w)``,
  ``w = -log(init_tau - 1)``.
* the backward: autograd through that graph, the spike's derivative being the surrogate g′.

Checked: every surrogate row of the page's table (SpikingJelly's g′ at SpikingJelly's
arguments against ``jax.grad`` of the spikefuse call the table gives), every number the page's
doctests print (recomputed from their inputs by the oracle), and IF/LIF/PLIF forward and
gradients over resets, ``decay_input`` and ``detach_reset`` on random inputs.
"""

from __future__ import annotations

import doctest
import math
import re
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spikefuse.surrogate as sf
from spikefuse.neurons import IF, LIF, PLIF

DOC = Path(__file__).resolve().parents[1] / "docs" / "migrating-spikingjelly.md"


# -- SpikingJelly's surrogate derivatives g'(x), with its defaults -----------------------------
def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _sj_fourier(x, n, T_period):
    w = 2 * math.pi / T_period
    return 4.0 / T_period * sum(np.cos((2 * i - 1) * w * x) for i in range(1, n))  # i < n


SJ = {  # name: (defaults, g'(x, **params))
    "Sigmoid": ({"alpha": 4.0}, lambda x, alpha: alpha * _sigmoid(alpha * x) * (1 - _sigmoid(alpha * x))),
    "ATan": ({"alpha": 2.0}, lambda x, alpha: alpha / 2 / (1 + (math.pi / 2 * alpha * x) ** 2)),
    "PiecewiseQuadratic": ({"alpha": 1.0},
                           lambda x, alpha: np.where(np.abs(x) > 1 / alpha, 0.0, alpha - alpha ** 2 * np.abs(x))),
    "PiecewiseExp": ({"alpha": 1.0}, lambda x, alpha: alpha / 2 * np.exp(-alpha * np.abs(x))),
    "SoftSign": ({"alpha": 2.0}, lambda x, alpha: 1 / (2 * alpha * (1 / alpha + np.abs(x)) ** 2)),
    "Erf": ({"alpha": 2.0}, lambda x, alpha: alpha / math.sqrt(math.pi) * np.exp(-(alpha * x) ** 2)),
    "NonzeroSignLogAbs": ({"alpha": 1.0}, lambda x, alpha: 1 / (1 / alpha + np.abs(x))),
    "PiecewiseLeakyReLU": ({"w": 1.0, "c": 0.01},
                           lambda x, w, c: np.where(np.abs(x) < w, 1 / (2 * w), c)),
    "S2NN": ({"alpha": 4.0, "beta": 1.0},
             lambda x, alpha, beta: np.where(x < 0, alpha * _sigmoid(alpha * x) * (1 - _sigmoid(alpha * x)),
                                             beta / (np.maximum(x, 0) + 1))),
    "LeakyKReLU": ({"leak": 0.0, "k": 1.0}, lambda x, leak, k: np.where(x >= 0, k, leak)),
    "LogTailedReLU": ({"alpha": 0.0},
                      lambda x, alpha: np.where(x > 1, 1 / np.maximum(x, 1), np.where(x <= 0, alpha, 1.0))),
    "SquarewaveFourierSeries": ({"n": 2, "T_period": 8.0}, _sj_fourier),
    "QPseudoSpike": ({"alpha": 2.0}, lambda x, alpha: (1 + 2 / (alpha - 1) * np.abs(x)) ** (-alpha)),
}


def sj_grad(call: str, x):
    """g′ of a SpikingJelly surrogate written as in the table, e.g. ``ATan()``."""
    name, args = re.fullmatch(r"(\w+)\((.*)\)", call).groups()
    defaults, fn = SJ[name]
    params = dict(defaults, **eval(f"dict({args})"))  # keyword arguments only, as in the table
    return fn(np.asarray(x, np.float64), **params)


# -- SpikingJelly's multi-step neurons, forward and backward -----------------------------------
def sj_node(x_seq, *, kind="LIF", tau=2.0, init_tau=2.0, decay_input=True, v_threshold=1.0,
            v_reset=0.0, detach_reset=False, surrogate="Sigmoid()", ct_spikes=None, ct_v=None):
    """Forward (spikes, v after each step, the final v) of IFNode / LIFNode / ParametricLIFNode
    with step_mode='m', and, given cotangents, the gradients to x_seq (and to PLIF's w)."""
    x_seq = np.asarray(x_seq, np.float64)
    w = -math.log(init_tau - 1.0)
    k = 1 / tau if kind == "LIF" else _sigmoid(w)  # 1/tau
    vr = 0.0 if v_reset is None else v_reset  # the charge uses 0 for a soft reset
    v = np.full(x_seq.shape[1:], vr)
    hs, ss, vs, vprev = [], [], [], []
    for x in x_seq:
        vprev.append(v)
        if kind == "IF":
            h = v + x
        elif decay_input:
            h = v + (x - (v - vr)) * k
        else:
            h = v - (v - vr) * k + x
        s = (h - v_threshold >= 0).astype(np.float64)
        v = h - s * v_threshold if v_reset is None else (1 - s) * h + s * v_reset
        hs.append(h), ss.append(s), vs.append(v)
    out = {"spikes": np.stack(ss), "v_seq": np.stack(vs), "v": v, "h": np.stack(hs)}
    if ct_spikes is None:
        return out
    g = sj_grad(surrogate, out["h"] - v_threshold)
    dv = np.asarray(ct_v, np.float64) + 0 * v  # dL/dv_t, from the future
    dx, dw = np.zeros_like(x_seq), 0.0
    for t in reversed(range(len(x_seq))):
        h, s = hs[t], ss[t]
        ds = ct_spikes[t] + (0 if detach_reset else (dv * -v_threshold if v_reset is None
                                                     else dv * (v_reset - h)))
        dh = dv * (1 if v_reset is None else 1 - s) + ds * g[t]
        if kind == "IF":
            dv, dx[t] = dh, dh
        elif decay_input:  # h = v + (x - v + vr) k
            dv, dx[t] = dh * (1 - k), dh * k
            dw += np.sum(dh * (x_seq[t] - (vprev[t] - vr)) * k * (1 - k))
        else:  # h = v - (v - vr) k + x
            dv, dx[t] = dh * (1 - k), dh
            dw += np.sum(dh * -(vprev[t] - vr) * k * (1 - k))
    return dict(out, dx=dx, dw=dw)


# -- the page's tables ---------------------------------------------------------------------------
def _page():
    return DOC.read_text(encoding="utf-8")


def _surrogate_rows():
    """(SpikingJelly call, spikefuse call) of each row whose second column is a call."""
    rows = []
    for line in _page().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and re.fullmatch(r"`surrogate\.\w+\(.*\)`", cells[0]):
            ours = re.fullmatch(r"`surrogate\.(\w+\(.*\))`", cells[1])
            rows.append((cells[0][len("`surrogate."):-1], ours.group(1) if ours else None))
    return rows


def test_the_table_lists_every_spikingjelly_surrogate_checked_here():
    assert sorted(re.match(r"\w+", sj).group(0) for sj, _ in _surrogate_rows()) == sorted(SJ)


@pytest.mark.parametrize("sj_call, ours", [r for r in _surrogate_rows() if r[1]])
def test_surrogate_row_gives_spikingjellys_gradient(sj_call, ours):
    # a grid that misses every kink (|x| = 1/alpha, w, 0, 1), in float32 for both
    x = np.concatenate([np.linspace(-3.3, 3.3, 67) + 0.013, [-1e-3, 1e-3, 0.37, -0.77]])
    x = x.astype(np.float32).astype(np.float64)
    ours_fn = eval(ours, vars(sf))
    got = jax.vmap(jax.grad(lambda v: ours_fn(v)))(jnp.asarray(x, jnp.float32))
    # g′ is computed in f32 here: up to a few ulps of 1 absolute (σ(z)(1 − σ(z)) near z = 7)
    np.testing.assert_allclose(np.asarray(got, np.float64), sj_grad(sj_call, x), rtol=2e-6, atol=1e-6,
                               err_msg=f"{sj_call} -> {ours}")


# -- the page's printed numbers -------------------------------------------------------------------
def _array(a, dtype=None, weak_type=None):
    return np.asarray(a, np.float64)


def _doc_examples():
    """Every >>> example of the page, in order: (source, expected output)."""
    text = _page()
    blocks = re.findall(r"```python\n(>>>.*?)```", text, re.S)
    parser = doctest.DocTestParser()
    return [(e.source.strip(), e.want.strip()) for b in blocks for e in parser.get_examples(b)]


# What each printed name is, by SpikingJelly's equations on the page's own inputs.
def _reference(name, ns):
    if name == "g_sj":
        return sj_grad("QPseudoSpike()", np.asarray(ns["points"]))
    x_seq = np.asarray(ns["x_seq"], np.float64)
    weights = ns.get("weights", np.ones(len(x_seq)))  # the loss's, once the page defines it
    cts = np.asarray(weights, np.float64)[:, None] * np.ones_like(x_seq)
    if name in ("plif_spikes", "grad_w"):
        plif = sj_node(x_seq, kind="PLIF", init_tau=2.0, v_reset=None, surrogate="ATan()",
                       ct_spikes=cts, ct_v=0.0)
        return {"plif_spikes": plif["spikes"], "grad_w": plif["dw"]}[name]
    lif = sj_node(x_seq, kind="LIF", tau=2.0, surrogate="ATan()", ct_spikes=cts, ct_v=0.0)
    return {"spikes": lif["spikes"], "v_seq": lif["v_seq"], "v_final": lif["v"],
            "grad_x": lif["dx"]}[name]


PRINTED = ("spikes", "v_seq", "v_final", "grad_x", "plif_spikes", "grad_w", "g_sj")


def test_printed_numbers_are_spikingjellys():
    ns: dict = {}
    checked = []
    for source, want in _doc_examples():
        if not want:  # a statement: run it, to have the example's inputs
            exec(compile(source, str(DOC), "exec"), ns)
            continue
        shown = re.fullmatch(r"show\((\w+)\)|(\w+)", source)  # a printed value
        if shown and (shown.group(1) or shown.group(2)) in PRINTED:
            name = shown.group(1) or shown.group(2)
            value = eval(want, {"Array": _array, "array": _array, "float32": None})
            np.testing.assert_allclose(value, _reference(name, ns), rtol=0, atol=6e-5,
                                       err_msg=f"the page prints {name} = {want}")
            checked.append(name)
    assert sorted(checked) == sorted(PRINTED), checked


def test_piecewise_leaky_relu_differs_only_at_the_kink():
    # As the table says: SpikingJelly takes c at |x| = w, spikefuse (braintools) 1/(2w).
    x = jnp.array([-1.0, 1.0])
    ours = jax.vmap(jax.grad(sf.PiecewiseLeakyRelu(c=0.01, w=1.0)))(x)
    np.testing.assert_allclose(np.asarray(ours), [0.5, 0.5])
    np.testing.assert_allclose(sj_grad("PiecewiseLeakyReLU()", [-1.0, 1.0]), [0.01, 0.01])


# -- IF / LIF / PLIF against the oracle on random inputs ---------------------------------------
CASES = [  # (kind, options)
    ("IF", {}), ("IF", {"v_reset": None}), ("IF", {"detach_reset": True}),
    ("LIF", {}), ("LIF", {"v_reset": None}), ("LIF", {"decay_input": False}),
    ("LIF", {"detach_reset": True, "v_reset": -0.2, "tau": 3.0}),
    ("LIF", {"decay_input": False, "v_reset": None, "detach_reset": True}),
    ("PLIF", {}), ("PLIF", {"v_reset": None, "init_tau": 3.0}),
    ("PLIF", {"decay_input": False, "detach_reset": True}),
]


@pytest.mark.parametrize("kind, options", CASES, ids=[f"{k}-{o}" for k, o in CASES])
def test_neurons_match_spikingjelly(kind, options):
    rng = np.random.default_rng(zlib.crc32(f"{kind}{sorted(options.items())}".encode()))
    T, N = 12, 40
    x_seq = rng.uniform(-0.5, 2.0, (T, N))
    ct_s, ct_v = rng.normal(size=(T, N)), rng.normal(size=N)
    ref = sj_node(x_seq, kind=kind, surrogate="ATan()", ct_spikes=ct_s, ct_v=ct_v, **options)
    margin = np.abs(ref["h"] - 1.0).min()
    assert margin > 1e-5, "inputs too close to the threshold for an f32 comparison"

    opts = {k: v for k, v in options.items() if k not in ("tau", "init_tau")}
    surrogate = sf.Arctan(alpha=2.0)
    if kind == "IF":
        opts.pop("decay_input", None)
        neuron = IF(surrogate=surrogate, **opts)
    elif kind == "LIF":
        neuron = LIF(tau=options.get("tau", 2.0), surrogate=surrogate, **opts)
    else:
        neuron = PLIF(init_tau=options.get("init_tau", 2.0), surrogate=surrogate, **opts)

    def run(neuron, x):
        spikes, v, v_seq = neuron(x, return_v_seq=True)
        return (spikes * ct_s).sum() + (v * ct_v).sum(), (spikes, v_seq)

    x32 = jnp.asarray(x_seq, jnp.float32)
    (_, (spikes, v_seq)), (dneuron, dx) = jax.value_and_grad(run, argnums=(0, 1), has_aux=True)(neuron, x32)
    np.testing.assert_array_equal(np.asarray(spikes), ref["spikes"])
    np.testing.assert_allclose(np.asarray(v_seq), ref["v_seq"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dx), ref["dx"], rtol=1e-4, atol=1e-5)
    if kind == "PLIF":
        np.testing.assert_allclose(float(dneuron.w), ref["dw"], rtol=1e-4, atol=1e-5)
