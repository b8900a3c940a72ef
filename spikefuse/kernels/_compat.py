"""jax-version shims for the kernels (jax 0.10.2, 0.11.x, 0.12.x) — nothing else lives here."""

import contextlib
import warnings
from collections.abc import Iterator

# jax >= 0.11 warns (deprecation id "jax-pallas-triton") each time a `pallas_call` is lowered
# through Triton; jax 0.10.2 does not. The text is matched from its start, so only this one
# warning is silenced.
TRITON_DEPRECATION_MESSAGE = r"The Pallas Triton backend is deprecated"


@contextlib.contextmanager
def silence_triton_deprecation() -> Iterator[None]:
    """Ignores jax's Pallas-Triton `DeprecationWarning`, and only it, inside the block.

    The warning is raised when a `pallas_call` is *lowered*, not when it is traced, so wrap
    the code that lowers: the primitive's lowering rule, `jax.jit(...).lower`, `jax.export`.
    Being a `contextlib.contextmanager`, it also decorates a function, e.g. a lowering rule:
    `mlir.register_lowering(p, silence_triton_deprecation()(mlir.lower_fun(f, ...)))`.
    Like `warnings.catch_warnings`, it is not thread-safe.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=TRITON_DEPRECATION_MESSAGE, category=DeprecationWarning)
        yield
