"""ESRGAN's RRDBNet in plain torch, for upscaler models (ESRGAN, Real-ESRGAN, their fine-tunes).

Why our own: ``spandrel`` (which detects many architectures) needs torchvision, and torchvision from
PyPI does not import beside this project's torch 2.13 CPU build. RRDBNet is the architecture nearly
every ``.pth`` upscaler in A1111's ``models/ESRGAN`` folder has, and it is ~60 lines.

Two key layouts are read: BasicSR/Real-ESRGAN's (``conv_first``, ``body.N.rdbK.convJ``, ``conv_body``,
``conv_up1``/``conv_up2``, ``conv_hr``, ``conv_last``) and the original ESRGAN's (``model.0``,
``model.1.sub.N.RDBK.convJ.0``, ...), which ``to_basicsr`` renames. The sizes (features, blocks, growth
channels) and the scale come from the weights: Real-ESRGAN x2 and x1 models fold the input with a pixel
unshuffle (``conv_first`` takes 12 or 48 channels), x4 takes 3.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn import functional


class ResidualDenseBlock(nn.Module):
    def __init__(self, features: int, grow: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, grow, 3, 1, 1)
        self.conv2 = nn.Conv2d(features + grow, grow, 3, 1, 1)
        self.conv3 = nn.Conv2d(features + 2 * grow, grow, 3, 1, 1)
        self.conv4 = nn.Conv2d(features + 3 * grow, grow, 3, 1, 1)
        self.conv5 = nn.Conv2d(features + 4 * grow, features, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = functional.leaky_relu(self.conv1(x), 0.2)
        x2 = functional.leaky_relu(self.conv2(torch.cat((x, x1), 1)), 0.2)
        x3 = functional.leaky_relu(self.conv3(torch.cat((x, x1, x2), 1)), 0.2)
        x4 = functional.leaky_relu(self.conv4(torch.cat((x, x1, x2, x3), 1)), 0.2)
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, features: int, grow: int) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(features, grow)
        self.rdb2 = ResidualDenseBlock(features, grow)
        self.rdb3 = ResidualDenseBlock(features, grow)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """Real-ESRGAN's ``RRDBNet`` (BasicSR ``archs/rrdbnet_arch.py``): 3 channels in and out, ``scale``
    1, 2 or 4 (two nearest-neighbour x2 upsamplings; x2 and x1 unshuffle the input first)."""

    def __init__(self, scale: int = 4, features: int = 64, blocks: int = 23, grow: int = 32) -> None:
        super().__init__()
        self.scale = scale
        self.conv_first = nn.Conv2d(3 * {4: 1, 2: 4, 1: 16}[scale], features, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(features, grow) for _ in range(blocks)))
        self.conv_body = nn.Conv2d(features, features, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(features, features, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(features, features, 3, 1, 1)
        self.conv_hr = nn.Conv2d(features, features, 3, 1, 1)
        self.conv_last = nn.Conv2d(features, 3, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = functional.pixel_unshuffle(x, {4: 1, 2: 2, 1: 4}[self.scale]) if self.scale < 4 else x
        feat = self.conv_first(feat)
        feat = feat + self.conv_body(self.body(feat))
        feat = functional.leaky_relu(self.conv_up1(functional.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        feat = functional.leaky_relu(self.conv_up2(functional.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(functional.leaky_relu(self.conv_hr(feat), 0.2))


_ESRGAN_BODY = re.compile(r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$")
_ESRGAN_TOP = {"model.0": "conv_first", "model.3": "conv_up1", "model.6": "conv_up2", "model.8": "conv_hr",
               "model.10": "conv_last"}


def to_basicsr(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original ESRGAN's keys renamed to BasicSR's (a BasicSR state dict comes back as it is)."""
    if "conv_first.weight" in state:
        return state
    blocks = {int(m.group(1)) for key in state if (m := _ESRGAN_BODY.match(key))}
    last = max(blocks, default=-1) + 1  # model.1.sub.<blocks> is the trunk's closing convolution
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if m := _ESRGAN_BODY.match(key):
            renamed[f"body.{m.group(1)}.rdb{m.group(2)}.conv{m.group(3)}.{m.group(4)}"] = tensor
        elif key.startswith(f"model.1.sub.{last}."):
            renamed["conv_body." + key.rsplit(".", 1)[1]] = tensor
        else:
            prefix, _, kind = key.rpartition(".")
            if prefix in _ESRGAN_TOP:
                renamed[f"{_ESRGAN_TOP[prefix]}.{kind}"] = tensor
    return renamed


def build_rrdbnet(state: dict[str, torch.Tensor]) -> RRDBNet:
    """An ``RRDBNet`` shaped after ``state`` (either layout) with its weights loaded; ``KeyError`` or
    ``RuntimeError`` when the weights are not an RRDBNet's."""
    state = to_basicsr(state)
    scale = {3: 4, 12: 2, 48: 1}[int(state["conv_first.weight"].shape[1])]
    features = int(state["conv_first.weight"].shape[0])
    grow = int(state["body.0.rdb1.conv1.weight"].shape[0])
    blocks = len({key.split(".")[1] for key in state if key.startswith("body.")})
    net = RRDBNet(scale, features, blocks, grow)
    net.load_state_dict(state, strict=True)
    return net.eval()
