"""Applications built on the deepzip library: each brings its data, reference models and recipes, and registers its
models through :func:`deepzip.models.register_model` (entry-point group ``deepzip.apps``). The library never imports
an app; the CLI drives them.

- :mod:`deepzip.apps.mnist`: MNIST, the LeNets and MLPs, their training recipes and the Deep Compression pipeline.
- :mod:`deepzip.apps.g2p`: grapheme-to-phoneme on CMUdict with sequence-level distillation.
- :mod:`deepzip.apps.sentence`: sentence-transformers models for post-training compression.
"""
