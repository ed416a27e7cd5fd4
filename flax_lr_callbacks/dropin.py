"""Old name of `flax_lr_callbacks.lr_callbacks` (`LRCallbacks` for hand-written loops)."""

from flax_lr_callbacks.lr_callbacks import (LRCallbacks, LRState, apply_lr,  # noqa: F401
                                            observe_lr)

__all__ = ["LRCallbacks", "LRState", "apply_lr", "observe_lr"]
