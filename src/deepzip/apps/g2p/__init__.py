"""Grapheme-to-phoneme on CMUdict: the dictionary (checked by SHA-256), recipes for attention GRU teachers and
students (:mod:`deepzip.models.seq2seq`), word- and sequence-level distillation, compressed students."""
