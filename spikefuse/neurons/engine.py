"""The neuron engine: any elementwise jnp step, run over a whole sequence on every backend.

`multistep` takes a user's step ``step(state, x_t, params, fire) -> (s_t, new_state)`` (the
contract of ``shared/spec/neurons.md``, "Any neuron") and runs it over ``x_seq``:

* ``"reference"``: a ``lax.scan`` of the step, differentiated by JAX (`reference.run_reference`);
* the kernel backends (``"pallas"``, ``"pallas_triton"``, ``"pallas_mgpu"`` and the
  interpret ones): one forward and one BPTT Pallas kernel (``fused.py`` over
  ``kernels/scan.py``, Triton, or ``kernels/mgpu_scan.py``, Mosaic GPU, on a GPU;
  ``kernels/tpu_scan.py`` on TPU), keeping only the state every K steps.

Both trace the same flat step (`FlatStep`: the user's step on flat tuples, with ``fire``
bound to the surrogate), so they compute the same function. Every built-in neuron (IF, LIF,
PLIF, ALIF in ``builtin.py``) is an instance of this engine.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spikefuse._checks import check_bool, check_broadcast, real_array
from spikefuse.kernels import dispatch, mgpu_scan, scan, sharding, tpu_scan
from spikefuse.neurons import _stepcheck, fused
from spikefuse.neurons.reference import default_unroll, run_reference
from spikefuse.surrogate import Sigmoid, Surrogate, _spike, grad_fn
from spikefuse.surrogate._base import check_surrogate

__all__ = ["FlatStep", "make_fire", "multistep", "run"]

_WHAT = "spikefuse.neurons.multistep"
MAX_STATE = 8


# -- fire: the Heaviside spike with the surrogate derivative ------------------------------
@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _heaviside(gfn, u, gparams):
    return (u >= 0).astype(u.dtype)


@_heaviside.defjvp
def _heaviside_jvp(gfn, primals, tangents):
    # dH/du = g'(u) (so dH/dh = g', dH/dthreshold = -g'); dH/d(surrogate parameters) = 0.
    # Differentiating this rule again differentiates g' itself (second order).
    u, gparams = primals
    return _heaviside(gfn, u, gparams), gfn(u, *gparams).astype(u.dtype) * tangents[0]


def _reference_fire(gfn, gparams, h, threshold=0.0):
    """``fire`` of the reference backend: the spike primitive, whose linearization keeps h
    (which the reset keeps anyway) rather than g'(h - threshold) — 8 bytes per neuron-step
    for a LIF's BPTT instead of 12. The same comparison and the same g' as `make_fire`."""
    return _spike.spike_p.bind(h, jnp.asarray(threshold, h.dtype), *gparams, grad_fn=gfn,
                               backend="reference")


def make_fire(gfn: Callable, gparams: tuple) -> Callable:
    """``fire(h, threshold=0.0)`` = H(h − threshold) with dH/dh = g′(h − threshold),
    dH/dthreshold = −g′ and no gradient to the surrogate's parameters ``gparams``.

    The kernel bodies' ``fire`` (a ``custom_jvp``, which the Pallas lowerings accept); the
    reference's ``lax.scan`` binds the spike primitive instead (`_reference_fire`): the same
    comparison and the same g′.
    """

    def fire(h, threshold=0.0):
        return _heaviside(gfn, h - threshold, gparams)

    return fire


# -- the flat step ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FlatStep:
    """A user's step on flat tuples: ``(state, xs, params) -> (outs, new_state)``.

    ``params`` holds the step's parameter leaves, then the surrogate's (``gfn``'s). The
    outputs are the spike, then (``emit_states``) the new state leaves. Hashable, so it is
    a static argument of ``jit``, the primitives and the kernels.
    """

    fn: Callable
    state_def: Any
    x_def: Any
    param_def: Any
    n_params: int
    gfn: Callable
    emit_states: bool = False
    reference: bool = False

    def call(self, state, xs, params):
        """The user's step on pytrees: ``(s, new_state)`` as it returns them."""
        gparams = tuple(params[self.n_params:])
        fire: Callable
        if self.reference:
            fire = functools.partial(_reference_fire, self.gfn, gparams)
        else:
            fire = make_fire(self.gfn, gparams)
        return self.fn(jax.tree.unflatten(self.state_def, state),
                       jax.tree.unflatten(self.x_def, xs),
                       jax.tree.unflatten(self.param_def, params[:self.n_params]), fire)

    def __call__(self, state, xs, params):
        s, new = self.call(state, xs, params)
        new = tuple(self.state_def.flatten_up_to(new))
        s = jnp.asarray(s).astype(state[0].dtype)
        return ((s, *new) if self.emit_states else (s,)), new


# -- validation ---------------------------------------------------------------------------
def _leaves(tree, name: str):
    """``tree``'s leaves with their names: ``name`` plus the key path, or (``name=""``, for
    the built-ins' parameter dicts) the key alone."""
    pairs, treedef = jax.tree_util.tree_flatten_with_path(tree)
    if not name:
        return [(str(getattr(k[-1], "key", k[-1])), v) for k, v in pairs], treedef
    return [(f"{name}{jax.tree_util.keystr(k)}", v) for k, v in pairs], treedef


def _check_step(step):
    if not callable(step):
        raise TypeError(f"{_WHAT}: step must be callable, got {type(step).__name__}")
    try:
        hash(step)
    except TypeError:
        raise TypeError(
            f"{_WHAT}: step must be hashable (a function, a functools.partial or a frozen "
            f"dataclass): it keys the compiled kernels; got {type(step).__name__}") from None


def _check_xs(x_seq):
    named, x_def = _leaves(x_seq, "x_seq")
    if not named:
        raise TypeError(f"{_WHAT}: x_seq must be an array [T, *shape] or a pytree of them, "
                        f"got {x_seq!r}")
    xs = [real_array(v, n, integers="reject") for n, v in named]
    first = xs[0]
    if first.ndim < 1:
        raise ValueError(f"{_WHAT}: {named[0][0]} must have a leading time axis, shape "
                         "[T, *shape]; got a 0-d array")
    if first.shape[0] < 1:
        raise ValueError(f"{_WHAT}: x_seq must have T >= 1 time steps, got shape {first.shape}")
    for (n, _), x in zip(named, xs):
        if x.shape != first.shape:
            raise ValueError(f"{_WHAT}: every x_seq leaf must have the same shape [T, *shape];"
                             f" {named[0][0]} has {first.shape}, {n} has {x.shape}")
    return xs, x_def


class _Converted(dict):
    """One validated array per argument object within a call: a value given twice (a
    built-in's ``v0`` defaults to its ``v_reset``) becomes one operand, and one residual."""

    def get_or(self, value, convert):
        key = id(value)
        if key not in self:
            self[key] = (value, convert())  # the value is held, so its id stays unique
        return self[key][1]


def _check_init(init, shape, cdt, names=None, seen=None):
    named, state_def = _leaves(init, "init")
    if names is not None and len(names) == len(named):
        named = [(n, v) for n, (_, v) in zip(names, named)]
    if not 1 <= len(named) <= MAX_STATE:
        raise ValueError(f"{_WHAT}: init must hold 1 to {MAX_STATE} state arrays (a pytree "
                         f"matching the step's state), got {len(named)}")
    for name, value in named:
        arr = real_array(value, name)
        # A Python int is fine (weakly typed, it takes the state's dtype); an integer array
        # would be a non-float state, which the surrogate gradient cannot flow through.
        if not jnp.issubdtype(arr.dtype, jnp.floating) and not getattr(arr, "weak_type", False):
            raise TypeError(f"{_WHAT}: {name} has dtype {arr.dtype}; every state leaf must "
                            "be floating (it is carried in the compute dtype)")
    return _check_numbers(named, shape, cdt, seen), state_def


def _check_numbers(named, shape, cdt, seen=None):
    """Each ``(name, value)``: a real array broadcastable to ``shape``, in ``cdt`` (one
    array per object across the calls sharing ``seen``)."""
    seen = _Converted() if seen is None else seen
    out = []
    for n, value in named:
        def convert(n=n, value=value):
            arr = real_array(value, n)
            check_broadcast(arr.shape, shape, n, "the neuron shape (x_seq's shape without "
                            "its leading time axis)")
            return arr.astype(cdt)

        out.append(seen.get_or(value, convert))
    return out


def _avals(arrays, shape=None):
    return tuple(jax.ShapeDtypeStruct(a.shape if shape is None else shape, a.dtype)
                 for a in arrays)


@functools.lru_cache(maxsize=512)
def _check_traced(flat: FlatStep, name: str, x_avals, state_avals, param_avals):
    """The step traced on the reference's shapes: elementwise, and returning a state like
    ``init`` (structure, neuron shape, compute dtype) and a spike of the neuron shape."""
    shape, cdt = state_avals[0].shape, state_avals[0].dtype
    out = _stepcheck.check_elementwise(flat.call, (state_avals, x_avals, param_avals),
                                       name=name, what=_WHAT)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError(f"{_WHAT}: the step {name} must return a pair (s_t, new_state), got "
                        f"{out!r}")
    s, new = out
    new_named, new_def = _leaves(new, "new_state")
    if new_def != flat.state_def:
        raise ValueError(f"{_WHAT}: the step {name} returns a state of structure {new_def}, "
                         f"but init has structure {flat.state_def}; they must match")
    for n, v in new_named:
        if tuple(v.shape) != tuple(shape):
            raise ValueError(f"{_WHAT}: the step {name} returns {n} of shape {tuple(v.shape)},"
                             f" but the state has the neuron shape {tuple(shape)}")
        if jnp.dtype(v.dtype) != jnp.dtype(cdt):
            raise ValueError(
                f"{_WHAT}: the step {name} returns {n} of dtype {v.dtype}, but the state is "
                f"carried in the compute dtype {cdt} (keep every operation in the state's "
                "dtype; bf16/f16 inputs are computed in float32)")
    if tuple(s.shape) != tuple(shape):
        raise ValueError(f"{_WHAT}: the step {name} returns a spike of shape "
                         f"{tuple(s.shape)}, but the neuron shape is {tuple(shape)}")


# The launch configuration type of each kernel family, and the families a kernel backend
# may lower to ("pallas": the platform, and on a GPU `dispatch.gpu_family`, decide).
_CONFIG_TYPES = {"triton": scan.ScanConfig, "mgpu": mgpu_scan.MgpuScanConfig,
                 "tpu": tpu_scan.TpuScanConfig}
_BACKEND_FAMILIES = {"pallas": ("triton", "mgpu", "tpu"), "pallas_triton": ("triton",),
                     "pallas_mgpu": ("mgpu",), "interpret": ("triton",),
                     "interpret_mgpu": ("mgpu",), "interpret_tpu": ("tpu",)}
_CONFIG_NAMES = {"triton": "spikefuse.kernels.scan.ScanConfig",
                 "mgpu": "spikefuse.kernels.mgpu_scan.MgpuScanConfig",
                 "tpu": "spikefuse.kernels.tpu_scan.TpuScanConfig"}


def _default_chunk(families, T: int, N: int, dtype) -> int:
    """K when the caller gives none: the Mosaic GPU heuristic's (at most 8) where that is
    the GPU family that will run, else the Triton one's (which the TPU kernels share)."""
    gpu = [f for f in families if f in ("triton", "mgpu")]
    if len(gpu) == 2:  # "pallas": the family a GPU would compile
        gpu = [dispatch.gpu_family("neurons")]
    if gpu == ["mgpu"]:
        return mgpu_scan.default_config(T, N, dtype).chunk
    return scan.default_config(T, N, dtype).chunk


def _kernel_configs(backend: str, config, T: int, N: int, dtype) -> dict:
    """``{family: config}`` for the kernel families ``backend`` may lower to (see
    ``_BACKEND_FAMILIES``), with one chunk K, the caller's if given, so the checkpoints are
    the same whichever runs; the caller's config for its own family, defaults for others."""
    families = _BACKEND_FAMILIES[backend]
    given = next((f for f, t in _CONFIG_TYPES.items() if isinstance(config, t)), None)
    if config is not None and given not in families:
        wanted = " or ".join(_CONFIG_NAMES[f] for f in families)
        raise TypeError(f"config: backend={backend!r} runs the "
                        f"{'/'.join(dispatch.family_name(f) for f in families)} kernels and "
                        f"needs a {wanted}, got a {type(config).__name__}")
    chunk = config.chunk if config is not None else _default_chunk(families, T, N, dtype)

    def default(family):  # (a caller's config is never replaced, nor a heuristic run for it)
        if family == "triton":
            return dataclasses.replace(scan.default_config(T, N, dtype), chunk=chunk)
        if family == "mgpu":
            return mgpu_scan.MgpuScanConfig(chunk=chunk)
        return tpu_scan.TpuScanConfig(chunk=chunk)

    return {f: config if f == given else default(f) for f in families}


# -- backends -----------------------------------------------------------------------------
def run(step, x_seq, init, params=None, *, surrogate: Surrogate | None = None,
        backend: str | None = None, return_states: bool = False, unroll: int | None = None,
        config: scan.ScanConfig | mgpu_scan.MgpuScanConfig | tpu_scan.TpuScanConfig | None = None,
        derive: Callable | None = None, init_names: tuple[str, ...] | None = None):
    """`multistep` with the knobs of the built-in neurons.

    Args:
      unroll: reference backend: ``lax.scan`` steps per iteration (default
        `reference.default_unroll`).
      config: fused backends: a ``kernels.scan.ScanConfig`` for the Triton kernels
        (``"pallas"`` / ``"pallas_triton"`` on a GPU, ``"interpret"``), a
        ``kernels.mgpu_scan.MgpuScanConfig`` for the Mosaic GPU kernels (``"pallas"`` /
        ``"pallas_mgpu"`` on a GPU, ``"interpret_mgpu"``) or a
        ``kernels.tpu_scan.TpuScanConfig`` for the TPU kernels (``"pallas"`` on a TPU,
        ``"interpret_tpu"``); ``"pallas"`` derives the other families' from its chunk K.
        Default: each family's `default_config`.
      derive: maps the validated ``params`` (leaves in the compute dtype) to the step's
        parameters, computed once outside the time loop and differentiated by JAX (e.g.
        ``1/tau``): errors name the caller's parameters, the step sees the derived ones.
      init_names: names of the ``init`` leaves in error messages (e.g. ``("v0",)``); when
        given, a ``params`` leaf is named by its dict key alone (``tau``, not
        ``params['tau']``), as the built-ins' arguments are.
    """
    _check_step(step)
    name = _stepcheck.step_name(step)
    xs, x_def = _check_xs(x_seq)
    where = sharding.placement(xs[0])
    if where.kind == "explicit":  # the time loop is sequential: T cannot be split
        sharding.check_lead(where.spec, 1, "x_seq")
    T, shape = xs[0].shape[0], tuple(xs[0].shape[1:])
    out_dtype = jnp.result_type(*xs)
    # The compute dtype, decided once: f32 state for bf16/f16/f32 inputs, f64 for f64.
    cdt = jnp.promote_types(out_dtype, jnp.float32)
    named, param_def = _leaves(params, "" if init_names else "params")
    seen = _Converted()
    user_params = _check_numbers(named, shape, cdt, seen)
    if derive is not None:
        user_params, param_def = jax.tree.flatten(
            derive(jax.tree.unflatten(param_def, user_params)))
    init, state_def = _check_init(init, shape, cdt, init_names, seen)
    surrogate = Sigmoid() if surrogate is None else check_surrogate(surrogate)
    gfn, gparams = grad_fn(surrogate)
    gparams = _check_numbers([(f"{type(surrogate).__name__}.{n}", p) for n, p in
                              zip(surrogate._split_fields()[0], gparams)], shape, cdt)
    check_bool(return_states, "return_states")
    if unroll is not None and (isinstance(unroll, bool) or not isinstance(unroll, int)
                               or unroll < 1):
        raise ValueError(f"unroll must be a positive int, got {unroll!r}")
    if config is not None and not isinstance(config, tuple(_CONFIG_TYPES.values())):
        raise TypeError(f"config must be a spikefuse.kernels.scan.ScanConfig (Triton kernels), "
                        f"a spikefuse.kernels.mgpu_scan.MgpuScanConfig (Mosaic GPU kernels) "
                        f"or a spikefuse.kernels.tpu_scan.TpuScanConfig (TPU kernels), got "
                        f"{type(config).__name__}")
    flat = FlatStep(step, state_def, x_def, param_def, len(user_params), gfn,
                    bool(return_states))
    all_params = (*user_params, *gparams)
    _check_traced(flat, name, _avals(xs, shape), _avals(init, shape), _avals(all_params))
    N = int(np.prod(shape, dtype=np.int64))

    resolved = dispatch.resolve(backend, op="neurons")
    if resolved == "reference" or N == 0:  # nothing to launch for zero neurons
        if unroll is None:
            unroll = default_unroll(T, N=N)
        outs, finals = run_reference(dataclasses.replace(flat, reference=True), unroll,
                                     out_dtype, tuple(xs), tuple(init), all_params)
    else:
        configs = _kernel_configs(resolved, config, T, N, out_dtype)
        modules = {"triton": scan, "mgpu": mgpu_scan, "tpu": tpu_scan}
        for family, cfg in configs.items():
            modules[family].check_size(T, N, cfg)
        if resolved in dispatch.COMPILED:  # compiling for CPU raises, no fallback
            xs[0] = dispatch.accelerator_only(xs[0], resolved)
        spec = fused.Spec("fwd", flat, len(xs), len(init), len(all_params),
                          1 + len(init) * bool(return_states), jnp.dtype(out_dtype),
                          resolved, configs.get("triton"), configs.get("tpu"),
                          configs.get("mgpu"), name)
        outs, finals = fused.forward(spec, tuple(xs), tuple(init), all_params)
    final_state = jax.tree.unflatten(state_def, finals)
    if return_states:
        return outs[0], final_state, jax.tree.unflatten(state_def, outs[1:])
    return outs[0], final_state


def multistep(step, x_seq, init, params=None, *, surrogate: Surrogate | None = None,
              backend: str | None = None, return_states: bool = False):
    r"""Runs any neuron, written as one elementwise jnp step, over a whole sequence.

    For t = 1 … T: ``s_t, state = step(state, x_t, params, fire)``, starting from ``init``.
    On ``"pallas"`` (GPU, TPU) and the interpret backends the loop is one forward Pallas
    kernel and one BPTT kernel that differentiates ``step`` with ``jax.vjp`` inside the
    kernel, keeping only the state every K steps; on ``"reference"`` it is a ``lax.scan``.
    Both run the same step, so they compute the same spikes and gradients.

    The step, ``step(state, x_t, params, fire) -> (s_t, new_state)``:

    * ``state``: a pytree of 1 to 8 arrays of the neuron shape, carried in the compute dtype
      (float32 for bf16/f16/f32 inputs, float64 for float64); ``new_state`` must have the
      same structure, shape and dtype.
    * ``x_t``: step t of ``x_seq`` (same structure), in the compute dtype.
    * ``params``: the ``params`` pytree, each leaf in the compute dtype.
    * ``fire(h, threshold=0.0)``: the spike :math:`H(h - \theta)`, except under
      differentiation, where we take :math:`dH/dh = g'(h - \theta)` and
      :math:`dH/d\theta = -g'(h - \theta)` from ``surrogate`` (0 for its parameters). Call it
      as often as the neuron needs.
    * It must be elementwise over neurons: no reductions, matmuls, reshapes, gathers or
      cumulative ops across neurons, and no closed-over arrays or traced values (pass them
      in ``params``). Static options belong in the step itself (a closure, a
      ``functools.partial`` or a frozen dataclass); the step must be hashable.

    Args:
      step: the neuron's step, as above.
      x_seq: inputs ``[T, *shape]`` (time first, T >= 1, floating), or a pytree of such
        arrays of one shape (several inputs per step).
      init: the initial state, a pytree matching the step's state; leaves are numbers or
        arrays broadcastable to ``shape``.
      params: a pytree of numbers or arrays broadcastable to ``shape`` (scalars,
        per-neuron, per-channel ``(C, 1, 1)``, …), or None.
      surrogate: any ``spikefuse.surrogate.Surrogate`` (built-in or subclass; its parameters
        may be traced); default ``Sigmoid()``.
      backend: ``None`` (configured default), ``"auto"``, ``"reference"``, ``"pallas"``,
        ``"pallas_triton"``, ``"pallas_mgpu"``, ``"interpret"``, ``"interpret_mgpu"`` or
        ``"interpret_tpu"`` (``spikefuse.kernels.dispatch``).
      return_states: also return the state after every step.

    Returns:
      ``(spikes, final_state)``, or ``(spikes, final_state, states)`` with
      ``return_states``: spikes ``[T, *shape]``, ``final_state`` like ``init`` with leaves
      of ``shape``, ``states`` like ``init`` with leaves ``[T, *shape]``; all in the dtype of
      ``x_seq`` (the result type of its leaves).

      Gradients (reverse and forward mode) flow to ``x_seq``, every ``init`` leaf and every
      ``params`` leaf, summed over time and over the neurons a leaf is shared by; the
      surrogate's parameters get 0. Works under ``jit``, ``vmap``, ``grad``,
      ``jax.checkpoint``, and per shard on inputs sharded over any axis but time.
      Second-order derivatives need ``backend="reference"``.

    Raises:
      ValueError: before any kernel runs, naming the step, for a step that is not
        elementwise over neurons, that returns a state unlike ``init`` or a spike not of
        the neuron shape, or (``backend="pallas"``, while compiling) that uses an operation
        the kernel of that platform cannot lower (say ``lax.erf`` on GPU, ``expm1`` on
        TPU; ``backend="reference"`` runs it); and for arguments of wrong shapes.
      TypeError: for a step that is not a hashable callable, a non-float state and
        arguments of wrong types.

    Example:
      >>> import jax.numpy as jnp
      >>> from spikefuse.neurons import multistep
      >>> def if_step(v, x, params, fire):  # integrate and fire, soft reset
      ...     h = v + x
      ...     s = fire(h, params["v_th"])
      ...     return s, h - params["v_th"] * s
      >>> s, v = multistep(if_step, jnp.full((4, 2), 0.6), init=0.0, params={"v_th": 1.0},
      ...                  backend="reference")
      >>> s[:, 0], v
      (Array([0., 1., 0., 1.], dtype=float32), Array([0.4000001, 0.4000001], dtype=float32))
    """
    return run(step, x_seq, init, params, surrogate=surrogate, backend=backend,
               return_states=return_states)
