"""LeNet as used by the ROG code (Yue et al., 2023): two 5x5 convs with bias, two bias-free linears."""
from __future__ import annotations

from torch import nn

from fedleak.client.models.base import MODELS, activation as act


@MODELS.register("lenet", doc="ROG's LeNet: conv32-conv64 (5x5, pad 2, bias) + maxpools, fc512, fc (no bias)")
class LeNet(nn.Module):
    def __init__(self, num_classes=1000, image_size=32, channels=3, width=1.0, activation="relu", init="default"):
        super().__init__()
        if init not in ("default", "dlg"):
            raise ValueError(f"lenet init must be 'default' or 'dlg', got {init!r}")
        if image_size % 4:
            raise ValueError(f"lenet needs an image size divisible by 4, got {image_size}")
        c1, c2, hid = int(round(32 * width)), int(round(64 * width)), int(round(512 * width))
        self.features = nn.Sequential(
            nn.Conv2d(channels, c1, 5, padding=2, bias=True), act(activation), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2, bias=True), act(activation), nn.MaxPool2d(2),
        )
        self.fc1 = nn.Linear(c2 * (image_size // 4) ** 2, hid, bias=False)
        self.act = act(activation)
        self.fc2 = nn.Linear(hid, num_classes, bias=False)
        if init == "dlg":  # DLG's reference code: every weight and bias ~ U(-0.5, 0.5)
            for p in self.parameters():
                nn.init.uniform_(p, -0.5, 0.5)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(self.features(x).flatten(1))))


@MODELS.register("lenet-dlg", doc="DLG's LeNet: 3 sigmoid convs (12 ch, 5x5, strides 2/2/1), one fc; U(-0.5,0.5) init")
class LeNetDLG(nn.Module):
    """The small LeNet of the DLG/iDLG reference code (Zhu et al. 2019): no pooling, sigmoid activations,
    every weight drawn from U(-0.5, 0.5). A smooth, injective-enough victim on which DLG converges."""

    def __init__(self, num_classes=1000, image_size=32, channels=3, width=1.0, activation="sigmoid"):
        super().__init__()
        c = max(1, int(round(12 * width)))
        self.features = nn.Sequential(
            nn.Conv2d(channels, c, 5, padding=2, stride=2), act(activation),
            nn.Conv2d(c, c, 5, padding=2, stride=2), act(activation),
            nn.Conv2d(c, c, 5, padding=2, stride=1), act(activation),
        )
        side = -(-(-(-image_size // 2)) // 2)
        self.fc = nn.Linear(c * side * side, num_classes)
        for p in self.parameters():
            nn.init.uniform_(p, -0.5, 0.5)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))
