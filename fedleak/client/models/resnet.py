"""ResNet-18 variants.

* ``resnet18-rog``: ROG's BN-free ResNet-18 (7x7/2 stem, no max-pool, 8x8 adaptive average pool, bias-free fc).
* ``resnet18``: standard ResNet-18 with BatchNorm, ImageNet stem (7x7/2 conv + 3x3/2 max-pool).
* ``resnet18-cifar``: standard ResNet-18 with BatchNorm, CIFAR stem (3x3/1 conv, no max-pool).
"""
from __future__ import annotations

from torch import nn

from fedleak.client.models.base import MODELS, activation as act


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, activation, norm: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout) if norm else nn.Identity()
        self.act1 = act(activation)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout) if norm else nn.Identity()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            layers = [nn.Conv2d(cin, cout, 1, stride, bias=False)]
            if norm:
                layers.append(nn.BatchNorm2d(cout))
            self.shortcut = nn.Sequential(*layers)
        self.act2 = act(activation)

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, num_classes, channels, width, activation, norm, stem, pool_size):
        super().__init__()
        w = [int(round(c * width)) for c in (64, 128, 256, 512)]
        if stem == "imagenet":
            layers = [nn.Conv2d(channels, w[0], 7, 2, 3, bias=False)]
            if norm:
                layers.append(nn.BatchNorm2d(w[0]))
            layers.append(act(activation))
            layers.append(nn.MaxPool2d(3, 2, 1))
        elif stem == "rog":
            layers = [nn.Conv2d(channels, w[0], 7, 2, 3, bias=False), act(activation)]
        else:  # cifar
            layers = [nn.Conv2d(channels, w[0], 3, 1, 1, bias=False)]
            if norm:
                layers.append(nn.BatchNorm2d(w[0]))
            layers.append(act(activation))
        self.stem = nn.Sequential(*layers)
        blocks = []
        cin = w[0]
        for i, (cout, stride) in enumerate(zip(w, (1, 2, 2, 2))):
            blocks += [BasicBlock(cin, cout, stride, activation, norm), BasicBlock(cout, cout, 1, activation, norm)]
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.fc = nn.Linear(cin * pool_size * pool_size, num_classes, bias=not stem == "rog")

    def forward(self, x):
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


@MODELS.register("resnet18-rog", doc="ROG's BN-free ResNet-18: 7x7/2 stem, 8x8 avg-pool, fc 512*64 (no bias)")
def resnet18_rog(num_classes=1000, image_size=128, channels=3, width=1.0, activation="relu"):
    return ResNet18(num_classes, channels, width, activation, norm=False, stem="rog", pool_size=8)


@MODELS.register("resnet18", doc="standard ResNet-18 with BatchNorm, ImageNet stem")
def resnet18(num_classes=1000, image_size=224, channels=3, width=1.0, activation="relu"):
    return ResNet18(num_classes, channels, width, activation, norm=True, stem="imagenet", pool_size=1)


@MODELS.register("resnet18-cifar", doc="standard ResNet-18 with BatchNorm, CIFAR stem (3x3/1, no max-pool)")
def resnet18_cifar(num_classes=10, image_size=32, channels=3, width=1.0, activation="relu"):
    return ResNet18(num_classes, channels, width, activation, norm=True, stem="cifar", pool_size=1)
