"""The bridge between models and files: the one checkpoint reader every command and function goes through
(:mod:`~deepzip.io.reader`), deepzip's checkpoints (:mod:`~deepzip.io.checkpoint`), ``.dz`` files of models
(:mod:`~deepzip.io.serialize`), foreign checkpoints (:mod:`~deepzip.io.foreign`: any safetensors, torch state_dict
files, Hugging Face folders) and torch.save files read safely (:mod:`~deepzip.io.torchfile`)."""
