"""Callbacks, one per module."""

from flax_lr_callbacks.callbacks.base import Callback
from flax_lr_callbacks.callbacks.base import StepContext
from flax_lr_callbacks.callbacks.composite import Sequential
from flax_lr_callbacks.callbacks.composite import Warmup
from flax_lr_callbacks.callbacks.cyclic import CyclicLR
from flax_lr_callbacks.callbacks.early_stopping import EarlyStopping
from flax_lr_callbacks.callbacks.grad_norm_guard import GradNormGuard
from flax_lr_callbacks.callbacks.smoothed_plateau import SmoothedPlateau
from flax_lr_callbacks.callbacks.one_cycle import OneCycle
from flax_lr_callbacks.callbacks.plateau import ReduceLROnPlateau
from flax_lr_callbacks.callbacks.restarts import CosineRestarts
from flax_lr_callbacks.callbacks.lr_finder import LRFinder
from flax_lr_callbacks.callbacks.lr_monitor import LearningRateMonitor
from flax_lr_callbacks.callbacks.progress import ProgressBar
from flax_lr_callbacks.callbacks.schedule import LRSchedule

__all__ = [
    "Callback",
    "CosineRestarts",
    "CyclicLR",
    "EarlyStopping",
    "GradNormGuard",
    "LRFinder",
    "LRSchedule",
    "LearningRateMonitor",
    "OneCycle",
    "ProgressBar",
    "ReduceLROnPlateau",
    "Sequential",
    "SmoothedPlateau",
    "StepContext",
    "Warmup",
]
