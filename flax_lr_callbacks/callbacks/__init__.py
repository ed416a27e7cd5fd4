"""Callbacks, one per module."""

from flax_lr_callbacks.callbacks.base import Callback
from flax_lr_callbacks.callbacks.base import StepContext
from flax_lr_callbacks.callbacks.lr_monitor import LearningRateMonitor
from flax_lr_callbacks.callbacks.progress import ProgressBar
from flax_lr_callbacks.callbacks.schedule import LRSchedule

__all__ = [
    "Callback",
    "LRSchedule",
    "LearningRateMonitor",
    "ProgressBar",
    "StepContext",
]
