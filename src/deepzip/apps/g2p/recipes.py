"""The G2P recipes (data only): teacher and student sizes, their training settings, and the compression settings.

Shared by ``deepzip g2p-*`` commands and ``benchmarks/seq_kd_g2p.py``. A trained model is cached under a name that
carries :func:`g2p_recipe_tag`, a hash of everything that made it, so a changed recipe retrains.

Example:
    >>> TEACHER.arch()
    'seq2seq:cell=gru,emb=64,enc=256,dec=256,layers=1,src=32,tgt=42'
    >>> len(g2p_recipe_tag(TEACHER, TEACHER_TRAIN))
    8
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from ...models.seq2seq import Seq2SeqConfig
from ...techniques.seqdistill import SeqTrainConfig
from .data import CMUDICT_SHA256, LETTERS, PHONEMES

__all__ = ["COMPRESS", "STUDENT", "STUDENT_TRAIN", "TEACHER", "TEACHER_TRAIN", "G2PCompressConfig", "g2p_recipe_tag"]

_SRC, _TGT = len(LETTERS) + 3, len(PHONEMES) + 3
#: Teacher: bidirectional GRU 2x256 encoder, GRU 256 decoder, Luong attention (1.22 M parameters).
TEACHER = Seq2SeqConfig(src_vocab=_SRC, tgt_vocab=_TGT, emb=64, enc=256, dec=256, dropout=0.2)
#: Student: bidirectional GRU 2x48 encoder, GRU 96 decoder (0.1 M parameters, 12x fewer): small enough that
#: training on the references alone leaves a clear gap to the teacher (the setting where sequence-level KD helps).
STUDENT = Seq2SeqConfig(src_vocab=_SRC, tgt_vocab=_TGT, emb=24, enc=48, dec=96, dropout=0.0)
#: Budgets sized for one CPU thread: each of the teacher's 16 epochs takes about 200 CPU seconds, a student's 20.
TEACHER_TRAIN = SeqTrainConfig(epochs=16, batch_size=256, lr=3e-3)
#: Every student (labels, word-KD, seq-KD, both) gets the same budget; alpha/T apply to word-level KD.
STUDENT_TRAIN = SeqTrainConfig(epochs=10, batch_size=256, lr=5e-3, alpha=0.5, temperature=1.0)


@dataclass
class G2PCompressConfig:
    """Compression of a distilled student: gradual pruning (AGP) to ``sparsity`` (embeddings to
    ``embedding_sparsity``) while retraining ``prune_epochs`` with the distillation loss, then k-means sharing
    with ``bits`` per index and ``centroid_epochs`` of centroid fine-tuning, again with the distillation loss."""

    # for the 1.7x larger student of the GPU run, benchmarks/g2p_compress_sweep.py chose 0.55/0.35/4 bits with 20+6
    # epochs on the dev split (10.5x at +0.40 dev WER; 12+4 epochs cost +0.79); the smaller CPU student needs more
    # sparsity for 10x (its biases and headers weigh more): 0.65/0.45 gave 11.1x at +3.7 test WER points with 8+3
    # epochs of retraining, +2.1 with 20+6. The same sweep on this student (dev split, 20+6 epochs): 0.6/0.4/4 bits
    # 10.5x at +0.59 dev WER; 0.55/0.35/3 bits 11.2x at +3.1 (3-bit sharing costs the most)
    sparsity: float = 0.6
    embedding_sparsity: float = 0.4
    bits: int = 4
    prune_epochs: int = 20
    centroid_epochs: int = 6
    lr: float = 1e-3
    train: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


COMPRESS = G2PCompressConfig()


def g2p_recipe_tag(model: Seq2SeqConfig, train: SeqTrainConfig, *extra: object) -> str:
    """8 hex digits naming a model's recipe: sizes, training settings (not device/progress), the data, ``extra``."""
    t = {k: v for k, v in train.to_dict().items() if k not in ("progress", "device")}
    blob = json.dumps([asdict(model), t, CMUDICT_SHA256, [str(e) for e in extra]], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]
