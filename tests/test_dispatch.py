"""``kernels.dispatch``: what ``"auto"`` picks per operation and platform, and what overrides it.

The expected picks are written out here, as the decision record (docs/backends.md): on a
GPU the elementwise spike runs the reference (no model measurement shows the Pallas kernel
faster) and the multi-step neurons run the fused kernels; a TPU mirrors the GPU (not
measured there); CPU and unknown platforms run the reference. Platforms are given by name,
or by faking ``jax.default_backend`` — nothing here needs the platform itself. Which kernels
a kernel backend runs, by the platform it is lowered for, is `dispatch.kernel_target`; which
GPU family "pallas" compiles is `dispatch.gpu_family`: Triton while jax has it (and no GPU
measurement flips a row of ``GPU_FAMILY``), Mosaic GPU without — tested by hiding jax's
Triton module.
"""

import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import lowering
import spikefuse
import spikefuse.neurons as sn
from spikefuse import surrogate as sf
from spikefuse.kernels import _compat, dispatch

EXPECTED_AUTO = {
    ("cpu", "elementwise"): "reference",
    ("cpu", "neurons"): "reference",
    ("gpu", "elementwise"): "reference",
    ("gpu", "neurons"): "pallas",
    ("cuda", "elementwise"): "reference",  # jax may name the GPU platform "cuda"
    ("cuda", "neurons"): "pallas",
    ("tpu", "elementwise"): "reference",
    ("tpu", "neurons"): "pallas",
    ("metal", "elementwise"): "reference",  # a platform the table does not know
    ("metal", "neurons"): "reference",
}
X = jnp.linspace(-1.0, 1.0, 7)


@pytest.fixture
def clean(monkeypatch):
    """No configured backend and no environment variable; both restored afterwards."""
    monkeypatch.setattr(dispatch, "_global", None)
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    return monkeypatch


@pytest.fixture
def on_platform(clean):
    """``on_platform(name)``: jax.default_backend() answers ``name`` from now on."""
    return lambda name: clean.setattr(jax, "default_backend", lambda: name)


@pytest.mark.parametrize("platform,op", sorted(EXPECTED_AUTO))
def test_auto_per_operation_and_platform(clean, platform, op):
    want = EXPECTED_AUTO[platform, op]
    assert dispatch.resolve("auto", op=op, platform=platform) == want
    assert dispatch.resolve(None, op=op, platform=platform) == want  # unset means "auto"


@pytest.mark.parametrize("platform", ["cpu", "gpu", "tpu"])
def test_auto_follows_jax_default_backend(on_platform, platform):
    on_platform(platform)
    for op in dispatch.OPS:
        assert dispatch.resolve(op=op) == EXPECTED_AUTO[platform, op]


def test_default_op_is_elementwise(on_platform):
    on_platform("gpu")
    assert dispatch.resolve() == "reference"
    assert dispatch.resolve("auto", platform="gpu") == "reference"


@pytest.mark.parametrize("name", ["reference", "pallas", "interpret", "interpret_tpu"])
@pytest.mark.parametrize("platform", ["cpu", "gpu", "tpu"])
def test_explicit_backends_are_strict(clean, name, platform):
    for op in dispatch.OPS:
        assert dispatch.resolve(name, op=op, platform=platform) == name
        assert dispatch.resolve(name.upper(), op=op, platform=platform) == name


def test_environment_variable_overrides_auto_for_every_operation(clean, on_platform):
    on_platform("gpu")
    clean.setenv(dispatch.ENV_VAR, "interpret")
    for op in dispatch.OPS:
        assert dispatch.resolve(op=op) == "interpret"
    assert dispatch.resolve("reference", op="neurons") == "reference"  # a call's argument wins
    clean.setenv(dispatch.ENV_VAR, "auto")  # read at every call, never cached
    assert dispatch.resolve(op="neurons") == "pallas"
    assert dispatch.resolve(op="elementwise") == "reference"
    clean.setenv(dispatch.ENV_VAR, "warp-drive")
    with pytest.raises(ValueError, match=dispatch.ENV_VAR):
        dispatch.resolve(op="neurons")


def test_context_and_global_overrides(on_platform):
    on_platform("gpu")
    spikefuse.set_backend("reference")
    assert dispatch.resolve(op="neurons") == "reference"
    with spikefuse.use_backend("auto"):  # the scoped "auto" decides per operation again
        assert dispatch.resolve(op="neurons") == "pallas"
        assert dispatch.resolve(op="elementwise") == "reference"
        with spikefuse.use_backend("pallas"):
            assert dispatch.resolve(op="elementwise") == "pallas"
        assert dispatch.resolve("interpret", op="neurons") == "interpret"
    assert dispatch.resolve(op="neurons") == "reference"


# (backend, lowering platform) -> (kernel family, interpreted): "pallas" compiles the kernels
# of the platform it is lowered for; the interpret backends name their family.
EXPECTED_KERNELS = {
    ("pallas", "cuda"): ("triton", False),  # while jax has Triton (test_gpu_family_*)
    ("pallas", "rocm"): ("triton", False),
    ("pallas", "tpu"): ("tpu", False),
    ("pallas_triton", "cuda"): ("triton", False),
    ("pallas_mgpu", "cuda"): ("mgpu", False),
    ("interpret", "cpu"): ("triton", True),
    ("interpret", "tpu"): ("triton", True),
    ("interpret_mgpu", "cpu"): ("mgpu", True),
    ("interpret_mgpu", "cuda"): ("mgpu", True),
    ("interpret_tpu", "cpu"): ("tpu", True),
    ("interpret_tpu", "cuda"): ("tpu", True),
}


@pytest.mark.parametrize("backend,platform", sorted(EXPECTED_KERNELS))
def test_kernel_target_by_platform_name(backend, platform):
    assert dispatch.kernel_target(backend, platform) == EXPECTED_KERNELS[backend, platform]


def test_pallas_refuses_only_cpu():
    with pytest.raises(dispatch.BackendUnavailableError, match="cannot compile for cpu"):
        dispatch.kernel_target("pallas", "cpu")
    with pytest.raises(ValueError, match="backend must be"):
        dispatch.kernel_target("reference", "tpu")
    x = jnp.ones(3)
    with pytest.raises(dispatch.BackendUnavailableError, match="interpret_tpu"):
        jax.jit(dispatch.accelerator_only)(x)  # compiled here, for the CPU
    for platform in ("cuda", "tpu"):  # lowered for the accelerators, untouched
        text = jax.export.export(jax.jit(dispatch.accelerator_only),
                                 platforms=[platform])(x).mlir_module()
        assert "spikefuse" not in text


@pytest.fixture
def no_triton(monkeypatch):
    """A jax without the Pallas Triton lowering: its module cannot be imported."""
    monkeypatch.setitem(sys.modules, "jax.experimental.pallas.triton", None)
    assert not _compat.has_triton()


def test_gpu_family_is_triton_until_measured(monkeypatch):
    for op in dispatch.OPS:  # jax 0.10-0.12 have Triton; Mosaic GPU not measured on a GPU
        assert dispatch.gpu_family(op) == "triton"
    monkeypatch.setitem(dispatch.GPU_FAMILY, "neurons", "mgpu")  # what a measurement does
    assert dispatch.gpu_family("neurons") == "mgpu"
    assert dispatch.gpu_family("elementwise") == "triton"
    assert dispatch.kernel_target("pallas", "cuda", "neurons") == ("mgpu", False)
    assert dispatch.kernel_target("pallas_triton", "cuda", "neurons") == ("triton", False)
    with pytest.raises(ValueError, match="op must be one of"):
        dispatch.gpu_family("neuron")


def test_auto_picks_only_measured_gpu_kernels(monkeypatch, no_triton):
    # Without Triton, "pallas" would compile the Mosaic GPU kernels, which no GPU
    # measurement backs: "auto" runs the reference there, on every GPU platform name.
    for platform in ("gpu", "cuda"):
        for op in dispatch.OPS:
            assert dispatch.resolve("auto", op=op, platform=platform) == "reference"
    assert dispatch.resolve("auto", op="neurons", platform="tpu") == "pallas"
    assert dispatch.resolve("pallas", op="neurons", platform="gpu") == "pallas"  # explicit
    with dispatch.use_backend("auto"):
        assert dispatch.resolve(op="neurons", platform="gpu") == "reference"
    # once a measurement backs them, "auto" picks them
    monkeypatch.setitem(dispatch.AUTO_GPU_FAMILIES, "neurons", ("triton", "mgpu"))
    assert dispatch.resolve("auto", op="neurons", platform="gpu") == "pallas"


def test_auto_picks_the_measured_triton_kernels(monkeypatch):
    assert dispatch.resolve("auto", op="neurons", platform="gpu") == "pallas"
    monkeypatch.setitem(dispatch.GPU_FAMILY, "neurons", "mgpu")  # a row turned, the table not
    assert dispatch.resolve("auto", op="neurons", platform="gpu") == "reference"


def test_without_triton_pallas_compiles_the_mosaic_gpu_kernels(no_triton):
    for op in dispatch.OPS:
        assert dispatch.gpu_family(op) == "mgpu"
        assert dispatch.kernel_target("pallas", "cuda", op) == ("mgpu", False)
    assert dispatch.kernel_target("pallas", "tpu", "neurons") == ("tpu", False)

    def f(v, x_seq):  # the spike's forward and backward, LIF's forward and backward
        y, vjp = jax.vjp(lambda v: spikefuse.fire(v, 0.5, backend="pallas"), v)
        out, pullback = jax.vjp(lambda x: sn.lif(x, backend="pallas")[0], x_seq)
        return y, vjp(v)[0], out, pullback(out)[0]

    text = lowering.export_for_cuda(f, jax.ShapeDtypeStruct((300,), jnp.float32),
                                    jax.ShapeDtypeStruct((6, 200), jnp.float32))
    assert text.count(lowering.MGPU_CALL) == 4 and lowering.TRITON_CALL not in text
    for name in ("heaviside", "grad_mul", "scan_fwd", "scan_bwd"):
        assert f"spikefuse_mgpu_{name}" in text


@pytest.mark.parametrize("backend", ["pallas_triton", "interpret"])
def test_triton_backends_without_triton_name_the_family_and_jax_version(no_triton, backend):
    words = rf"{backend}.*Triton.*jax {re.escape(jax.__version__)}"
    with pytest.raises(dispatch.BackendUnavailableError, match=words):
        dispatch.kernel_target(backend, "cuda")
    with pytest.raises(dispatch.BackendUnavailableError, match=words):
        jax.jit(lambda x: spikefuse.fire(x, backend=backend)).lower(X)
    with pytest.raises(dispatch.BackendUnavailableError, match=words):
        lowering.export_for_cuda(lambda x: sn.lif(x, backend=backend)[0],
                                 jax.ShapeDtypeStruct((4, 8), jnp.float32))


def test_compiled_backends_refuse_cpu_by_name():
    for backend, family in (("pallas_mgpu", "Mosaic GPU"), ("pallas_triton", "Triton")):
        with pytest.raises(dispatch.BackendUnavailableError,
                           match=rf"'{backend}' compiles the {family} kernels.*cpu"):
            jax.jit(lambda x: spikefuse.fire(x, backend=backend))(X)
        with pytest.raises(dispatch.BackendUnavailableError, match=backend):
            dispatch.kernel_target(backend, "tpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        dispatch.accelerator_only(X, "interpret")


def test_spikefuse_imports_and_runs_on_a_jax_without_triton():
    """In a fresh process where jax's Triton module cannot be imported, spikefuse imports,
    the Mosaic GPU kernels run (interpreted) and "interpret" says why it cannot."""
    code = """if True:
        import sys
        sys.modules["jax.experimental.pallas.triton"] = None
        import jax.numpy as jnp
        import spikefuse
        x = jnp.array([-1.0, 0.5, 2.0])
        print(spikefuse.fire(x, 0.0, backend="interpret_mgpu").tolist())
        try:
            spikefuse.fire(x, 0.0, backend="interpret")
        except spikefuse.BackendUnavailableError as e:
            print("refused:", e)
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=pathlib.Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "[0.0, 1.0, 1.0]"
    assert lines[1].startswith("refused:") and "Triton" in lines[1]


@pytest.mark.parametrize("op", ["neuron", "Elementwise", "", None])
def test_unknown_operation_names_the_argument(clean, op):
    with pytest.raises(ValueError, match="op must be one of"):
        dispatch.resolve("reference", op=op)


def _spike_backend(fn):
    """The backend the spike primitives in ``fn``'s jaxpr were bound with (tracing only)."""
    eqns = [e for e in jax.make_jaxpr(fn)(X).jaxpr.eqns
            if e.primitive.name.startswith("spikefuse_spike")]
    assert eqns, "no spike primitive traced"
    return {e.params["backend"] for e in eqns}


def test_surrogate_call_on_gpu_runs_the_reference_unless_asked(on_platform):
    on_platform("gpu")
    assert _spike_backend(lambda x: sf.Sigmoid()(x)) == {"reference"}
    assert _spike_backend(lambda x: spikefuse.fire(x, 0.5)) == {"reference"}
    with spikefuse.use_backend("pallas"):
        assert _spike_backend(lambda x: sf.Sigmoid()(x)) == {"pallas"}
    assert _spike_backend(lambda x: spikefuse.fire(x, 0.5, backend="pallas")) == {"pallas"}


def test_neurons_on_gpu_run_the_fused_kernels_by_default(on_platform):
    on_platform("gpu")
    jaxpr = str(jax.make_jaxpr(lambda x: sn.lif(x)[0])(jnp.ones((4, 8))))
    assert "spikefuse_scan_fwd" in jaxpr  # the fused forward's primitive (a kernel when lowered)
