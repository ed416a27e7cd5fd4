"""Data helpers: Grain datasets of in-memory arrays and the Fashion-MNIST loader."""

from flax_lr_callbacks.data.fashion_mnist import load_fashion_mnist
from flax_lr_callbacks.data.grain import ArrayDataset
from flax_lr_callbacks.data.grain import as_batches

__all__ = [
    "ArrayDataset",
    "as_batches",
    "load_fashion_mnist",
]
