"""Techniques: model -> model transforms, in place (names end in ``_``) and torch-only (no bytes, no files).

- :mod:`~deepzip.techniques.prune`: magnitude pruning, masks as parametrizations, schedules, sensitivity scans.
- :mod:`~deepzip.techniques.share`: k-means weight sharing (codebook parametrizations), fixed point.
- :mod:`~deepzip.techniques.distill`: knowledge distillation (soft targets at a temperature).
- :mod:`~deepzip.techniques.seqdistill`: word- and sequence-level distillation of encoder-decoders.
- :mod:`~deepzip.techniques.lowrank`: Tucker-2, SVD, tensor-train layers, EVBMF ranks.
- :mod:`~deepzip.techniques.posttrain`: post-training compression to a quality bound.
- :mod:`~deepzip.techniques.shrink`: removal of dead neurons and filters.
"""
