"""flax_lr_callbacks: learning-rate callbacks for Flax that run inside the jitted train step."""

from flax_lr_callbacks.callbacks.base import Callback
from flax_lr_callbacks.callbacks.base import RunPlan
from flax_lr_callbacks.callbacks.checkpoint import ModelCheckpoint
from flax_lr_callbacks.checkpointing import CheckpointError
from flax_lr_callbacks.callbacks.composite import Sequential
from flax_lr_callbacks.callbacks.composite import Warmup
from flax_lr_callbacks.callbacks.cyclic import CyclicLR
from flax_lr_callbacks.callbacks.early_stopping import EarlyStopping
from flax_lr_callbacks.callbacks.base import Observation
from flax_lr_callbacks.callbacks.grad_norm_guard import GradNormGuard
from flax_lr_callbacks.callbacks.smoothed_plateau import SmoothedPlateau
from flax_lr_callbacks.callbacks.base import StepContext
from flax_lr_callbacks.callbacks.lr_finder import LRFinder
from flax_lr_callbacks.callbacks.lr_monitor import LearningRateMonitor
from flax_lr_callbacks.callbacks.one_cycle import OneCycle
from flax_lr_callbacks.callbacks.plateau import ReduceLROnPlateau
from flax_lr_callbacks.callbacks.progress import ProgressBar
from flax_lr_callbacks.callbacks.restarts import CosineRestarts
from flax_lr_callbacks.callbacks.schedule import LRSchedule
from flax_lr_callbacks.data.fashion_mnist import load_fashion_mnist
from flax_lr_callbacks.data.grain import ArrayDataset
from flax_lr_callbacks.lr_callbacks import LRCallbacks
from flax_lr_callbacks.nan_policy import NonFiniteLossError
from flax_lr_callbacks.lr_callbacks import LRState
from flax_lr_callbacks.lr_callbacks import apply_lr
from flax_lr_callbacks.lr_callbacks import observe_lr
from flax_lr_callbacks.finder import LRFinderResult
from flax_lr_callbacks.hyperparams import get_hyperparam
from flax_lr_callbacks.hyperparams import get_hyperparams
from flax_lr_callbacks.hyperparams import injectable
from flax_lr_callbacks.hyperparams import set_hyperparam
from flax_lr_callbacks.hyperparams import set_hyperparams
from flax_lr_callbacks.loggers.base import LoggerCollection
from flax_lr_callbacks.loggers.errors import LoggerError
from flax_lr_callbacks.loggers.csv_logs import CSVLogger
from flax_lr_callbacks.loggers.tensorboard import TensorBoardLogger
from flax_lr_callbacks.nnx_state import NNXTrainState
from flax_lr_callbacks.plan import preview
from flax_lr_callbacks.trainer import Trainer
from flax_lr_callbacks.trainer import TrainerState

__version__ = "0.1.0"

__all__ = [
    "ArrayDataset",
    "Callback",
    "CSVLogger",
    "CheckpointError",
    "CosineRestarts",
    "CyclicLR",
    "EarlyStopping",
    "GradNormGuard",
    "LRFinder",
    "LRFinderResult",
    "LRCallbacks",
    "LRSchedule",
    "LRState",
    "LearningRateMonitor",
    "LoggerCollection",
    "LoggerError",
    "ModelCheckpoint",
    "NNXTrainState",
    "NonFiniteLossError",
    "Observation",
    "OneCycle",
    "ProgressBar",
    "ReduceLROnPlateau",
    "RunPlan",
    "Sequential",
    "SmoothedPlateau",
    "StepContext",
    "TensorBoardLogger",
    "Trainer",
    "TrainerState",
    "apply_lr",
    "get_hyperparam",
    "get_hyperparams",
    "injectable",
    "load_fashion_mnist",
    "observe_lr",
    "preview",
    "set_hyperparam",
    "set_hyperparams",
    "Warmup",
]
