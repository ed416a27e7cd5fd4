"""Loggers: TensorBoard and CSV run folders, the logger protocol, lists of loggers."""

from flax_lr_callbacks.loggers.base import Logger
from flax_lr_callbacks.loggers.base import LoggerCollection
from flax_lr_callbacks.loggers.errors import LoggerError
from flax_lr_callbacks.loggers.base import combine_loggers
from flax_lr_callbacks.loggers.csv_logs import CSVLogger
from flax_lr_callbacks.loggers.run_config import final_metrics
from flax_lr_callbacks.loggers.run_config import run_config
from flax_lr_callbacks.loggers.tensorboard import TensorBoardLogger

__all__ = [
    "CSVLogger",
    "Logger",
    "LoggerCollection",
    "LoggerError",
    "TensorBoardLogger",
    "combine_loggers",
    "final_metrics",
    "run_config",
]
