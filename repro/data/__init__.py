"""Datasets: embedded offline subsets, real hub loaders, label noise, HANS-style generation."""
from repro.data.core import Batch, Dataset, ImageDataset, TextDataset, batch_from, concat_datasets
from repro.data.noise import flip_labels
from repro.data.registry import available, load

__all__ = ["Batch", "Dataset", "ImageDataset", "TextDataset", "available", "batch_from", "concat_datasets",
           "flip_labels", "load"]
