"""Reference models, by name: the LeNets of Deep Compression and the MLPs of Hinton et al.'s distillation paper.

``get_model(name, trust_code=True)`` also accepts ``"package.module:factory"``, a callable returning an ``nn.Module``
(the user's own). Importing a module runs its code, so that needs ``trust_code=True``: a name read from a file is
never imported otherwise (:class:`~deepzip.errors.UntrustedCodeError`).

Example:
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

from .errors import UntrustedCodeError

__all__ = ["CNN4", "MLP", "MODELS", "LeNet5", "LeNet300", "get_model", "model_name"]


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


def max_pool2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)`` on (B, C, H, W); without autograd, as two pairwise maxima (the same values).

    torch's CPU max-pool computes argmax indices even for inference and was the largest single cost of a Tucker-2
    CNN at batch 1 (~100 us of ~500 on a 2-core EPYC); pairwise ``torch.maximum`` over the 2x2 windows is exact and
    was 1.2-4x (batch 1) and 4-8x (batch 64) faster there. Training keeps ``F.max_pool2d`` (its gradient routing for
    ties), so trained models and files do not change.

    Example:
        >>> x = torch.randn(2, 3, 9, 8)
        >>> with torch.no_grad():
        ...     torch.equal(max_pool2(x), F.max_pool2d(x, 2))
        True
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return F.max_pool2d(x, 2)
    h, w = x.shape[-2:]
    x = x[:, :, : h // 2 * 2, : w // 2 * 2]
    x = torch.maximum(x[..., 0::2], x[..., 1::2])  # (B, C, H, W/2)
    return torch.maximum(x[:, :, 0::2], x[:, :, 1::2])  # (B, C, H/2, W/2)


torch.fx.wrap("max_pool2")  # one call in a traced graph (deepzip.shrink sees through it as a per-channel op)


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


#: Models by name. Factories take no arguments.
MODELS: dict[str, Callable[[], nn.Module]] = {
    "lenet300": LeNet300,
    "lenet5": LeNet5,
    "cnn4": CNN4,
    "mlp1200": lambda: MLP((1200, 1200), dropout=0.2, input_dropout=0.1),  # light: it must fit (a KD teacher)
    "mlp800": lambda: MLP((800, 800)),
    "mlp30": lambda: MLP((30, 30)),
}


def get_model(name: str, seed: int | None = 0, *, trust_code: bool = False) -> nn.Module:
    """Build a fresh model by registered name (:data:`MODELS`), or ``"package.module:factory"`` or
    ``"path/to/file.py:factory"`` (no PYTHONPATH needed) with ``trust_code``.

    ``seed`` fixes the initial weights (without touching the global random state), so a training run with the same
    seeds gives the same model; ``None`` draws them from the global generator. ``trust_code`` allows importing the
    module a ``"package.module:factory"`` name gives and calling the factory: that runs the module's code, so pass
    it only for names you wrote or files you trust (as Hugging Face's ``trust_remote_code``).

    Raises:
        UntrustedCodeError: ``"package.module:factory"`` without ``trust_code=True`` (nothing is imported).
        ValueError: unknown name, or a factory that does not return an ``nn.Module``.

    Example:
        >>> try:
        ...     get_model("os:abort")  # imports nothing
        ... except UntrustedCodeError as e:
        ...     print(str(e)[:60])
        model 'os:abort' names code to import (package.module:factor
    """
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return get_model(name, seed=None, trust_code=trust_code)
    if not isinstance(name, str):
        raise ValueError(f"model name {name!r}: expected a string")
    if name in MODELS:
        model = MODELS[name]()
    elif name.startswith("seq2seq:"):  # an attention encoder-decoder named by its sizes (deepzip.seq)
        from .seq import build_seq2seq

        model = build_seq2seq(name)
    elif ":" in name and not trust_code:
        raise UntrustedCodeError(
            f"model {name!r} names code to import (package.module:factory); deepzip imports nothing unless asked: "
            "pass trust_code=True (CLI: --trust-code) if you trust where the name came from, or give the model "
            f"yourself (deepzip.load(path, model=MyNet()), CLI: --model); registered models: {', '.join(MODELS)}"
        )
    elif ":" in name:
        from ._user import resolve

        model = resolve(name, "model")()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model {name!r}: factory returned {type(model).__name__}, not an nn.Module")
    else:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)} or 'package.module:factory' "
                         "(with trust_code)")
    model.deepzip_arch = name  # type: ignore[assignment]  # remembered so files can name their architecture
    return model


def model_name(model: nn.Module) -> str | None:
    """The architecture name a model was built under by :func:`get_model`, if any."""
    name = getattr(model, "deepzip_arch", None)
    return name if isinstance(name, str) else None
