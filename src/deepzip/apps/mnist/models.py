"""The MNIST reference models: the LeNets of Deep Compression, the MLPs of Hinton et al.'s distillation paper and a
wider CNN for the low-rank work. :func:`register` enters them in :data:`deepzip.models.MODELS` (each reads a 1x28x28
image), so ``get_model("lenet300")`` and a file naming ``lenet300`` find them.

Example:
    >>> from deepzip.models import get_model
    >>> m = get_model("lenet300")
    >>> sum(p.numel() for p in m.parameters())
    266610
    >>> import torch
    >>> tuple(get_model("lenet5")(torch.zeros(2, 1, 28, 28)).shape)
    (2, 10)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...models import max_pool2, register_model

__all__ = ["CNN4", "CNNBN", "MLP", "MNIST_MODELS", "LeNet5", "LeNet300", "register"]


class LeNet300(nn.Module):
    """LeNet-300-100: 784-300-100-10 with ReLU (266,610 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (B, 784)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """Caffe's LeNet-5: conv 20 5x5, max-pool 2, conv 50 5x5, max-pool 2, fc 500, ReLU, fc 10 (431,080 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = max_pool2(self.conv1(x))  # (B, 20, 12, 12)
        x = max_pool2(self.conv2(x))  # (B, 50, 4, 4)
        x = F.relu(self.fc1(x.flatten(1)))  # (B, 500)
        return self.fc2(x)


class CNN4(nn.Module):
    """A wider MNIST CNN, where Tucker-2 has room: four 3x3 convs of 32, 64, 128, 128 channels (padding 1, ReLU,
    max-pool 2 after the 1st and 2nd, so the wide convs run at 7x7), then fc 6272 -> 10 (302,986 parameters,
    14.7 M multiply-adds an image: a quarter of pooling after the 2nd and 4th, so it trains to convergence on a
    2-core CPU in well under an hour)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.conv4 = nn.Conv2d(128, 128, 3, padding=1)
        self.fc = nn.Linear(128 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = max_pool2(F.relu(self.conv1(x)))  # (B, 32, 14, 14)
        x = max_pool2(F.relu(self.conv2(x)))  # (B, 64, 7, 7)
        x = F.relu(self.conv3(x))  # (B, 128, 7, 7)
        x = F.relu(self.conv4(x))  # (B, 128, 7, 7)
        return self.fc(x.flatten(1))


class CNNBN(nn.Module):
    """The MNIST twin of Garipov et al.'s CIFAR-10 conv-fc net, for tensor-train layers: 3x3 convs of 16, 32, 64
    channels (padding 1, no bias, batch norm, ReLU; max-pool 2 after the 1st and 2nd), fc 3136 -> 512 (batch norm,
    ReLU), fc 512 -> 10 (1,635,434 parameters with the batch norms, 3.5 M multiply-adds an image, narrow enough to
    train on one CPU core). Channel counts are powers of two and 3136 = 8*8*7*7, so every layer factors into TT
    modes; the first conv (one input channel) and the last fc stay dense, as in the paper."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(64)
        self.fc1 = nn.Linear(64 * 7 * 7, 512, bias=False)
        self.bn4 = nn.BatchNorm1d(512)
        self.fc2 = nn.Linear(512, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = max_pool2(F.relu(self.bn1(self.conv1(x))))  # (B, 16, 14, 14)
        x = max_pool2(F.relu(self.bn2(self.conv2(x))))  # (B, 32, 7, 7)
        x = F.relu(self.bn3(self.conv3(x)))  # (B, 64, 7, 7)
        x = F.relu(self.bn4(self.fc1(x.flatten(1))))  # (B, 512)
        return self.fc2(x)


class MLP(nn.Module):
    """A ReLU MLP on flattened 28x28 images, with optional dropout (input and hidden) as in Hinton et al. 2015."""

    def __init__(self, hidden: tuple[int, ...], *, dropout: float = 0.0, input_dropout: float = 0.0,
                 classes: int = 10) -> None:
        super().__init__()
        sizes = (784, *hidden, classes)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.dropout = dropout
        self.input_dropout = input_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.dropout(x.flatten(1), self.input_dropout, self.training)
        for layer in self.layers[:-1]:
            x = F.dropout(F.relu(layer(x)), self.dropout, self.training)
        return self.layers[-1](x)


#: The MNIST models by name. Factories take no arguments.
MNIST_MODELS: dict[str, Callable[[], nn.Module]] = {
    "lenet300": LeNet300,
    "lenet5": LeNet5,
    "cnn4": CNN4,
    "cnnbn": CNNBN,
    "mlp1200": lambda: MLP((1200, 1200), dropout=0.2, input_dropout=0.1),  # light: it must fit (a KD teacher)
    "mlp800": lambda: MLP((800, 800)),
    "mlp30": lambda: MLP((30, 30)),
}



# fx sees max_pool2 as one call only where torch.fx.wrap names it in the calling module's globals (shrink_ traces
# through it as a per-channel op), so wrap it here too, where the CNNs call it.
torch.fx.wrap("max_pool2")


def register() -> None:
    """Enter the MNIST models in the library's registry (idempotent), each with its 1x28x28 example input."""
    for name, factory in MNIST_MODELS.items():
        register_model(name, factory, example_input=(1, 1, 28, 28))
