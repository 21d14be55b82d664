"""VGG for small images (CIFAR-style), from torchvision's VGG configurations and ``make_layers``."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from repro.data.core import Batch, ImageDataset
from repro.errors import UnknownNameError
from repro.models.base import ReproModel

DEPTH_TO_CFG = {11: "A", 13: "B", 16: "D", 19: "E"}


class VGG(ReproModel):
    """VGG-11/13/16/19 with BatchNorm for 28- or 32-pixel images with 1 or 3 channels.

    Convolutions follow torchvision's configuration of the given depth (3x3 conv stacks, BatchNorm,
    max-pooling), with every width multiplied by ``width`` (1.0 = the standard 64..512 channels; the
    small profiles use less to fit a 2-core CPU). 28-pixel inputs skip the last max-pool (28 is not
    divisible by 32). The head is global average pooling, ``Linear(C, hidden)``, ReLU, dropout (or
    turn-over dropout when ``turnover`` is set), and ``classifier = Linear(hidden, num_classes)``.

    ``forward(pixel_values, ids=None, flip=None)`` returns logits; ``ids``/``flip`` only matter for
    turn-over dropout.
    """

    last_layer_name = "classifier"
    input_name = "pixel_values"  # the keyword a plain (images, labels) tensor pair is passed as

    def __init__(self, num_classes: int = 10, depth: int = 11, in_channels: int = 1,
                 image_size: int = 28, width: float = 1.0, hidden: int = 512, dropout: float = 0.5,
                 turnover: dict | None = None):
        super().__init__()
        if depth not in DEPTH_TO_CFG:
            raise UnknownNameError(f"VGG depth must be one of {sorted(DEPTH_TO_CFG)}, got {depth}")
        if image_size not in (28, 32):
            raise ValueError(f"image_size must be 28 or 32, got {image_size}")
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        self.spec = dict(kind="vgg", num_classes=num_classes, depth=depth, in_channels=in_channels,
                         image_size=image_size, width=width, hidden=hidden, dropout=dropout,
                         turnover=turnover)
        self.num_classes = num_classes
        cfg = [v if v == "M" else max(8, int(round(v * width))) for v in cfgs[DEPTH_TO_CFG[depth]]]
        if image_size == 28:
            cfg = cfg[:-1]  # drop the last max-pool
        features = make_layers(cfg, batch_norm=True)
        first = features[0]
        if in_channels != first.in_channels:  # make_layers assumes RGB
            features[0] = nn.Conv2d(in_channels, first.out_channels, kernel_size=3, padding=1)
        # plain ReLU (not in-place) so per-example gradients through torch.func work
        for i, m in enumerate(features):
            if isinstance(m, nn.ReLU):
                features[i] = nn.ReLU()
        self.features_net = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        channels = [v for v in cfg if v != "M"][-1]
        self.fc = nn.Linear(channels, hidden)
        self.act = nn.ReLU()
        if turnover:
            from repro.models.turnover import TurnOverDropout

            self.drop = TurnOverDropout(hidden, **turnover)
        else:
            self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_classes)
        self.register_buffer("mean", torch.tensor(0.5), persistent=False)
        self.register_buffer("std", torch.tensor(0.5), persistent=False)

    def _hidden(self, pixel_values, ids=None, flip=None):
        x = (pixel_values - self.mean) / self.std
        x = self.pool(self.features_net(x)).flatten(1)
        x = self.act(self.fc(x))
        if self.spec["turnover"]:
            return self.drop(x, ids=ids, flip=flip)
        return self.drop(x)

    def features(self, pixel_values, ids=None, flip=None) -> torch.Tensor:
        """Penultimate activations (the input of ``classifier``)."""
        return self._hidden(pixel_values, ids, flip)

    def forward(self, pixel_values, ids=None, flip=None) -> torch.Tensor:
        return self.classifier(self._hidden(pixel_values, ids, flip))

    def encode(self, ds: ImageDataset) -> Batch:
        """Images to float tensors in [0, 1] (normalisation happens inside the model)."""
        self.check_labels(ds)
        if ds.images.shape[1] != self.spec["in_channels"] or ds.images.shape[-1] != self.spec["image_size"]:
            raise ValueError(f"images of shape {ds.images.shape[1:]} do not fit this VGG "
                             f"(in_channels={self.spec['in_channels']}, image_size={self.spec['image_size']})")
        pixels = torch.from_numpy(ds.images).float().div_(255.0)
        return Batch({"pixel_values": pixels}, torch.from_numpy(ds.labels), torch.from_numpy(ds.ids))
