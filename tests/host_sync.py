"""A probe that counts device-to-host conversions of jax.Arrays.

On CPU, JAX's transfer guard never fires (NumPy reads CPU buffers zero-copy through the buffer
protocol), so the probe wraps every Python-level exit instead: the ArrayImpl conversion
methods, and `numpy.asarray` / `numpy.array` when handed a jax.Array.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np

_METHODS = ("_value", "__array__", "item", "tolist", "__float__", "__int__", "__bool__",
            "__index__")


@contextlib.contextmanager
def count_host_transfers(on_transfer):
    """Calls ``on_transfer(kind)`` at every host conversion of a jax.Array inside the block."""
    cls = type(jnp.zeros(()))  # the concrete jax.Array class, without importing jax._src
    saved = {name: cls.__dict__.get(name) for name in _METHODS}
    np_saved = (np.asarray, np.array)
    depth = [0]  # conversions nested inside a counted one are the same transfer

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            if depth[0] == 0:
                on_transfer(name)
            depth[0] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                depth[0] -= 1
        return wrapper

    for name, orig in saved.items():
        if isinstance(orig, property):
            setattr(cls, name, property(counted(name, orig.fget)))
        elif orig is not None:
            setattr(cls, name, counted(name, orig))

    def np_wrap(name, fn):
        inner = counted(name, fn)
        return lambda a, *args, **kw: (inner if isinstance(a, jax.Array) else fn)(a, *args, **kw)

    np.asarray, np.array = np_wrap("np.asarray", np_saved[0]), np_wrap("np.array", np_saved[1])
    try:
        yield
    finally:
        np.asarray, np.array = np_saved
        for name, orig in saved.items():
            if orig is not None:
                setattr(cls, name, orig)
