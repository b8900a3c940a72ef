"""Input validation shared by every public entry point: clear errors, raised before any kernel."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np


def real_array(value: Any, name: str, *,
               integers: Literal["keep", "float", "reject"] = "keep") -> jax.Array:
    """``value`` as a real array, or a ``TypeError`` naming ``name``.

    Strings, bools and complex numbers are refused. ``integers``: ``"keep"`` them,
    convert them to the default ``"float"`` dtype, or ``"reject"`` them.
    """
    if isinstance(value, str):
        raise TypeError(f"{name} must be a real number or array, got a string {value!r}")
    if value is None:
        raise TypeError(f"{name} must be a real number or array, got None")
    try:
        arr = jnp.asarray(value)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{name} must be a real number or array, got {type(value).__name__}: {err}"
        ) from None
    expected = ("a real floating array" if integers == "reject"
                else "a real floating or integer array")
    if arr.dtype == jnp.bool_:
        raise TypeError(f"{name} must be {expected}, got dtype bool")
    if jnp.issubdtype(arr.dtype, jnp.complexfloating):
        raise TypeError(
            f"{name} must be real, got complex dtype {arr.dtype} (a spike of a complex number "
            "is undefined; pass .real explicitly if that is what you mean)"
        )
    if jnp.issubdtype(arr.dtype, jnp.integer) and integers != "reject":
        return arr.astype(jnp.result_type(float)) if integers == "float" else arr
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(f"{name} must be {expected}, got dtype {arr.dtype}")
    return arr


def check_bool(value: Any, name: str) -> None:
    """``TypeError`` unless ``value`` is a bool (Python or numpy), naming ``name``."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def check_broadcast(shape: Sequence[int], target: Sequence[int], what: str,
                    target_desc: str = "the input's shape") -> None:
    """``ValueError`` unless ``shape`` broadcasts to ``target`` without enlarging it."""
    shape, target = tuple(shape), tuple(target)
    try:
        out = np.broadcast_shapes(shape, target)
    except ValueError:
        out = None
    if out != target:
        raise ValueError(
            f"{what} has shape {shape}, which does not broadcast to {target_desc} {target} "
            "without enlarging it"
        )
