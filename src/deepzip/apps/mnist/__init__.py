"""MNIST: the data (checked by SHA-256), the LeNets and MLPs, their recipes and the Deep Compression pipeline."""

from __future__ import annotations


def register() -> None:
    """Register the MNIST models (the ``deepzip.apps`` entry point)."""
    from .models import register as register_models

    register_models()
