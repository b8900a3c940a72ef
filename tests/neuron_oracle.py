"""A ``lax.scan`` of a neuron step with a spike rule written here: the tests' independent
oracle for ``spikefuse.neurons`` (no spikefuse code runs in it).

``oracle(step, x_seq, init, params, gprime)`` runs ``step(state, x_t, params, fire)`` over
the leading axis of ``x_seq`` in float32 (float64 for float64 inputs), where
``fire(h, threshold)`` is the Heaviside spike whose derivative is ``gprime(h - threshold)`` —
a closed form each test writes by hand for the surrogate it gives spikefuse.
"""

import functools

import jax
import jax.numpy as jnp


@functools.lru_cache(maxsize=None)
def _spike(gprime):
    @jax.custom_jvp
    def spike(u):
        return (u >= 0).astype(u.dtype)

    @spike.defjvp
    def _(primals, tangents):
        (u,), (t,) = primals, tangents
        return spike(u), gprime(u) * t

    return spike


def sigmoid_gprime(alpha):
    """d/du sigmoid(alpha u), by hand."""
    def gprime(u):
        sig = 1.0 / (1.0 + jnp.exp(-alpha * u))
        return alpha * sig * (1.0 - sig)

    return gprime


def gaussian_gprime(sigma, alpha):
    """alpha times the normal density N(u; 0, sigma^2), by hand (braintools' GaussianGrad)."""
    def gprime(u):
        return alpha * jnp.exp(-0.5 * (u / sigma) ** 2) / (sigma * jnp.sqrt(2.0 * jnp.pi))

    return gprime


def oracle(step, x_seq, init, params, gprime):
    """``(spikes, final_state)`` of ``step`` by ``lax.scan``, in f32 (f64 for f64 inputs),
    outputs in x's dtype."""
    spike = _spike(gprime)
    leaves = jax.tree.leaves(x_seq)
    dtype, shape = leaves[0].dtype, leaves[0].shape[1:]
    cdt = jnp.promote_types(dtype, jnp.float32)
    init = jax.tree.map(lambda v: jnp.broadcast_to(jnp.asarray(v, cdt), shape), init)
    params = jax.tree.map(lambda p: jnp.asarray(p, cdt), params)

    def fire(h, threshold=0.0):
        return spike(h - threshold)

    def body(state, x_t):
        s, new = step(state, jax.tree.map(lambda a: a.astype(cdt), x_t), params, fire)
        return new, s.astype(dtype)

    final, s = jax.lax.scan(body, init, x_seq)
    return s, jax.tree.map(lambda v: v.astype(dtype), final)
