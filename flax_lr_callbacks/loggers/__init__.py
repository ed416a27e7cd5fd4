"""Loggers."""

from flax_lr_callbacks.loggers.tensorboard import TensorBoardLogger

__all__ = ["TensorBoardLogger"]
