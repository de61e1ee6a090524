"""A tiny random ESRGAN-architecture upscaler for the demo bundle (``demo_model``)::

    upscalers/demo-esrgan.pth   an x4 RRDBNet (8 features, 1 block), Real-ESRGAN's file shape
                                (``{"params_ema": state_dict}``, BasicSR key names)

It makes noise, but it runs the path a real ESRGAN/Real-ESRGAN ``.pth`` takes (``engine.upscalers``:
``torch.load(weights_only=True)``, the sizes read from the weights, the upscale, the resize).
"""

from __future__ import annotations

from pathlib import Path

UPSCALERS_DIR = "upscalers"
DEMO_UPSCALER = "demo-esrgan"


def write_demo_upscaler(directory: Path, seed: int) -> None:
    import torch

    from sdworker.engine.rrdbnet import RRDBNet

    torch.manual_seed(seed)
    net = RRDBNet(scale=4, features=8, blocks=1, grow=4)
    folder = directory / UPSCALERS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": net.state_dict()}, folder / f"{DEMO_UPSCALER}.pth")
