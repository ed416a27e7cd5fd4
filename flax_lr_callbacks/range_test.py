"""Old name of `flax_lr_callbacks.lr_sweep` (the LR range test as compiled steps)."""

from flax_lr_callbacks.lr_sweep import chunk_size, run, validate_args  # noqa: F401

__all__ = ["run", "chunk_size", "validate_args"]
