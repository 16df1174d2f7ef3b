"""The ConvNet of Inverting Gradients (Geiping et al., 2020): 8 conv-BN-act layers, width w (default 64)."""
from __future__ import annotations

from torch import nn

from fedleak.client.models.base import MODELS, activation as act


def _block(cin, cout, activation, norm):
    layers = [nn.Conv2d(cin, cout, 3, padding=1)]
    if norm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(act(activation))
    return layers


@MODELS.register("convnet", doc="Inverting Gradients' ConvNet (8 conv-BN-ReLU, width 64)")
class ConvNet(nn.Module):
    def __init__(self, num_classes=10, image_size=32, channels=3, width=1.0, activation="relu", batchnorm=True):
        super().__init__()
        w = max(1, int(round(64 * width)))
        layers = []
        layers += _block(channels, w, activation, batchnorm)
        layers += _block(w, 2 * w, activation, batchnorm)
        layers += _block(2 * w, 2 * w, activation, batchnorm)
        layers += _block(2 * w, 4 * w, activation, batchnorm)
        layers += _block(4 * w, 4 * w, activation, batchnorm)
        layers += _block(4 * w, 4 * w, activation, batchnorm)
        layers += [nn.MaxPool2d(3)]
        layers += _block(4 * w, 4 * w, activation, batchnorm)
        layers += _block(4 * w, 4 * w, activation, batchnorm)
        layers += [nn.AdaptiveMaxPool2d(3)]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(36 * w, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))
