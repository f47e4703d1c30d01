"""Attention encoder-decoders built from ``nn.GRU``/``nn.LSTM`` layers, with batched greedy and beam-search decoding.

:class:`Seq2Seq` is a bidirectional recurrent encoder and a recurrent decoder with Luong ("general") attention and no
input feeding. Why this form: without input feeding the decoder's recurrence does not depend on the attention, so
training runs the decoder ``nn.GRU`` over the whole target at once (one fused call, no Python loop over time steps),
which is what makes training on 2 CPU cores practical; decoding steps the same layer one token at a time. Every
weight matrix is an ``nn.Embedding``/``nn.Linear``/``nn.GRU`` parameter, so :func:`deepzip.techniques.prune.prune_`,
:func:`deepzip.techniques.share.share_weights_` and the ``.dz`` file compress all of them.

A model is named by its architecture string (``"seq2seq:cell=gru,emb=64,enc=256,dec=256,layers=1,src=32,tgt=42"``),
which the ``.dz`` file stores, so ``deepzip.load(path)`` rebuilds it.

The encoder-decoder protocol that :mod:`deepzip.techniques.seqdistill` and the decoders use:
``model(src, src_len, tgt_in) -> logits (B, T, V)``, ``model.encode(src, src_len) -> state`` and
``model.step(tokens (B,), hidden, state) -> (log-probs (B, V), hidden)`` with ``model.init_hidden(state)``,
``model.expand(state, k)`` (repeat every row k times) and ``model.select(hidden, rows)``.

One input row (batch 1) is decoded by :mod:`deepzip.models.seqfast` (the same arithmetic in compiled NumPy kernels, a
few fused products per step) for both greedy and beam search, where the model is a one-layer GRU on CPU.

Example:
    >>> import torch
    >>> m = Seq2Seq(Seq2SeqConfig(src_vocab=10, tgt_vocab=8, emb=8, enc=8, dec=8))
    >>> src, n = torch.tensor([[3, 4, 5], [6, 7, 0]]), torch.tensor([3, 2])
    >>> tuple(m(src, n, torch.tensor([[1, 3], [1, 4]])).shape)
    (2, 2, 8)
    >>> g = greedy_decode(m, src, n, max_len=5)
    >>> b = beam_search(m, src, n, beam=3, max_len=5)
    >>> len(g), len(b), all(len(s) <= 5 for s in g + b)
    (2, 2, True)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from tqdm.auto import tqdm

__all__ = ["Seq2Seq", "Seq2SeqConfig", "beam_candidates", "beam_search", "build_seq2seq", "decode_many",
           "greedy_decode", "pad_batch"]

PAD, SOS, EOS = 0, 1, 2
_CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


@dataclass(frozen=True)
class Seq2SeqConfig:
    """Sizes of a :class:`Seq2Seq`: vocabularies (with PAD=0, SOS=1, EOS=2), embedding width, encoder units per
    direction, decoder units, layers of each recurrent stack, ``cell`` ``"gru"`` or ``"lstm"``, dropout."""

    src_vocab: int
    tgt_vocab: int
    emb: int = 64
    enc: int = 256
    dec: int = 256
    layers: int = 1
    cell: str = "gru"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.cell not in _CELLS:
            raise ValueError(f"cell={self.cell!r}, expected one of {tuple(_CELLS)}")
        for f in ("src_vocab", "tgt_vocab", "emb", "enc", "dec", "layers"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{f}={v!r}, expected a positive integer")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout}, expected [0, 1)")

    def arch(self) -> str:
        """The architecture string stored in ``.dz`` files (dropout is a training setting, not stored)."""
        return (f"seq2seq:cell={self.cell},emb={self.emb},enc={self.enc},dec={self.dec},layers={self.layers},"
                f"src={self.src_vocab},tgt={self.tgt_vocab}")

    @classmethod
    def from_arch(cls, arch: str) -> Seq2SeqConfig:
        """Parse :meth:`arch`'s string. Raises ValueError on a malformed one."""
        head, _, body = arch.partition(":")
        keys = {"src": "src_vocab", "tgt": "tgt_vocab", "cell": "cell", "emb": "emb", "enc": "enc", "dec": "dec",
                "layers": "layers"}
        try:
            if head != "seq2seq":
                raise ValueError
            kv = dict(item.split("=", 1) for item in body.split(","))
            args: dict[str, Any] = {keys[k]: (v if k == "cell" else int(v)) for k, v in kv.items()}
            return cls(**args)
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"architecture {arch!r}: expected 'seq2seq:cell=gru,emb=E,enc=H,dec=D,layers=L,"
                             "src=S,tgt=T'") from None


class Seq2Seq(nn.Module):
    """Bidirectional recurrent encoder + recurrent decoder with Luong attention (see the module docstring)."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        c = self.config = config
        rnn = _CELLS[c.cell]
        drop = c.dropout if c.layers > 1 else 0.0
        self.src_emb = nn.Embedding(c.src_vocab, c.emb, padding_idx=PAD)
        self.encoder = rnn(c.emb, c.enc, num_layers=c.layers, batch_first=True, bidirectional=True, dropout=drop)
        self.bridge = nn.Linear(2 * c.enc, c.dec)  # encoder summary -> decoder's initial state
        self.tgt_emb = nn.Embedding(c.tgt_vocab, c.emb, padding_idx=PAD)
        self.decoder = rnn(c.emb, c.dec, num_layers=c.layers, batch_first=True, dropout=drop)
        self.attn = nn.Linear(2 * c.enc, c.dec, bias=False)  # keys: W m_s, score = h_t . W m_s
        self.combine = nn.Linear(2 * c.enc + c.dec, c.dec)
        self.out = nn.Linear(c.dec, c.tgt_vocab)
        self.deepzip_arch = c.arch()

    # -- encoder
    def encode(self, src: torch.Tensor, src_len: torch.Tensor) -> dict[str, torch.Tensor]:
        """``src`` (B, S) padded ids, ``src_len`` (B,) -> memory (B, S, 2E), keys (B, S, D), pad mask (B, S), h0."""
        x = F.dropout(self.src_emb(src), self.config.dropout, self.training)  # (B, S, emb)
        if bool((src_len == src.shape[1]).all()):  # no padding (batch 1, say): skip the packing overhead
            memory, last = self.encoder(x)  # (B, S, 2E)
        else:
            packed = pack_padded_sequence(x, src_len.cpu(), batch_first=True, enforce_sorted=False)
            out, last = self.encoder(packed)
            memory, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])  # (B, S, 2E)
        h = last[0] if isinstance(last, tuple) else last  # (2L, B, E)
        h = h.view(self.config.layers, 2, h.shape[1], h.shape[2])  # (L, 2, B, E)
        h0 = torch.tanh(self.bridge(torch.cat([h[:, 0], h[:, 1]], dim=-1)))  # (L, B, D)
        return {"memory": memory, "keys": self.attn(memory), "mask": src != PAD, "h0": h0}

    def init_hidden(self, state: dict[str, torch.Tensor]) -> Any:
        h0 = state["h0"].contiguous()
        return (h0, torch.zeros_like(h0)) if self.config.cell == "lstm" else h0

    def _readout(self, dec_out: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """Decoder outputs (B, T, D) -> logits (B, T, V), attending over the memory."""
        scores = dec_out @ state["keys"].transpose(1, 2)  # (B, T, S)
        scores = scores.masked_fill(~state["mask"][:, None, :], float("-inf"))
        ctx = torch.softmax(scores, dim=-1) @ state["memory"]  # (B, T, 2E)
        h = torch.tanh(self.combine(torch.cat([ctx, dec_out], dim=-1)))  # (B, T, D)
        return self.out(F.dropout(h, self.config.dropout, self.training))

    def forward(self, src: torch.Tensor, src_len: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, T, V) for ``tgt_in`` (B, T) = SOS + target (padded)."""
        state = self.encode(src, src_len)
        y = F.dropout(self.tgt_emb(tgt_in), self.config.dropout, self.training)  # (B, T, emb)
        dec_out, _ = self.decoder(y, self.init_hidden(state))  # (B, T, D)
        return self._readout(dec_out, state)

    def step(
        self, tokens: torch.Tensor, hidden: Any, state: dict[str, torch.Tensor], *, log_probs: bool = True
    ) -> tuple[torch.Tensor, Any]:
        """One decoding step: ``tokens`` (B,) -> log-probabilities (B, V) (raw logits when ``log_probs`` is False:
        all that greedy decoding needs) and the new hidden state.

        Decoding is dominated by per-step overhead at small batch, so a one-layer GRU decoder steps with the fused
        ``torch.gru_cell`` (the same arithmetic as the ``nn.GRU`` call used in training, in a single op)."""
        y = self.tgt_emb(tokens)  # (B, emb)
        d = self.decoder
        if self.config.cell == "gru" and self.config.layers == 1:
            h = torch.gru_cell(y, hidden[0], d.weight_ih_l0, d.weight_hh_l0, d.bias_ih_l0, d.bias_hh_l0)  # (B, D)
            hidden = h[None]
        else:
            out, hidden = d(y[:, None, :], hidden)  # (B, 1, D)
            h = out[:, 0]
        scores = (state["keys"] @ h[:, :, None])[:, :, 0].masked_fill(~state["mask"], float("-inf"))  # (B, S)
        ctx = (torch.softmax(scores, dim=-1)[:, None, :] @ state["memory"])[:, 0]  # (B, 2E)
        logits = self.out(torch.tanh(self.combine(torch.cat([ctx, h], dim=-1))))  # (B, V)
        return (torch.log_softmax(logits, dim=-1) if log_probs else logits), hidden

    @staticmethod
    def expand(state: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
        """Repeat every row of the encoder state ``k`` times (rows b*k .. b*k+k-1 belong to input b)."""
        return {n: t.repeat_interleave(k, dim=1 if n == "h0" else 0) for n, t in state.items()}

    @staticmethod
    def select(hidden: Any, rows: torch.Tensor) -> Any:
        """Reorder the hidden state's batch rows (beam search)."""
        if isinstance(hidden, tuple):
            return tuple(h[:, rows] for h in hidden)
        return hidden[:, rows]


#: The most parameters :func:`build_seq2seq` builds from an architecture string (256M: 1 GiB in float32, the default
#: decode bound of a file), since the string may come from a file and torch allocates the whole model at once.
MAX_PARAMS = 1 << 28


def parameter_count(c: Seq2SeqConfig) -> int:
    """The number of parameters of ``Seq2Seq(c)``, computed without building it."""
    g = 4 if c.cell == "lstm" else 3  # gates
    enc = sum(2 * g * c.enc * ((c.emb if i == 0 else 2 * c.enc) + c.enc + 2) for i in range(c.layers))
    dec = sum(g * c.dec * ((c.emb if i == 0 else c.dec) + c.dec + 2) for i in range(c.layers))
    return (c.src_vocab * c.emb + c.tgt_vocab * c.emb + enc + dec + (2 * c.enc + 1) * c.dec + 2 * c.enc * c.dec
            + (2 * c.enc + c.dec + 1) * c.dec + (c.dec + 1) * c.tgt_vocab)


def build_seq2seq(arch: str) -> Seq2Seq:
    """A fresh :class:`Seq2Seq` from its architecture string (see :meth:`Seq2SeqConfig.arch`).

    Raises:
        ValueError: a malformed string (a size below 1 too), or more than :data:`MAX_PARAMS` parameters (checked before
            anything is allocated).
    """
    config = Seq2SeqConfig.from_arch(arch)  # sizes below 1 are refused there
    n = parameter_count(config)
    if n > MAX_PARAMS:
        raise ValueError(f"architecture {arch!r}: {n:,} parameters, more than the {MAX_PARAMS:,} deepzip builds from "
                         "a name; give the model yourself (deepzip.load(path, model=...))")
    return Seq2Seq(config)


def config_dict(config: Seq2SeqConfig) -> dict[str, Any]:
    """The config as a plain dict (JSON)."""
    return asdict(config)


def config_from_dict(d: dict[str, Any]) -> Seq2SeqConfig:
    """Inverse of :func:`config_dict`; unknown keys are an error."""
    names = {f.name for f in fields(Seq2SeqConfig)}
    if not isinstance(d, dict) or set(d) - names:
        raise ValueError(f"seq2seq config {d!r}: unknown keys {sorted(set(d) - names) if isinstance(d, dict) else d}")
    return Seq2SeqConfig(**d)


def _fast(model: nn.Module) -> Any:
    """The model's NumPy one-word decoder (:func:`deepzip.models.seqfast.fast_decoder`), or None."""
    from .seqfast import fast_decoder

    return fast_decoder(model)


def _trim(row: list[int]) -> list[int]:
    return row[:row.index(EOS)] if EOS in row else row


@torch.no_grad()
def greedy_decode(model: nn.Module, src: torch.Tensor, src_len: torch.Tensor, *, max_len: int = 30) -> list[list[int]]:
    """Batched greedy decoding: for each input row, the output token ids (without SOS/EOS).

    Args:
        model: an encoder-decoder following the protocol of this module.
        src: (B, S) padded input ids; src_len: (B,) lengths.
        max_len: most output tokens per row.
    """
    was = model.training
    model.eval()
    if src.shape[0] == 1 and (fast := _fast(model)) is not None:  # one word: the NumPy step (deepzip.models.seqfast)
        model.train(was)
        return [fast.greedy(src[0, :int(src_len[0])].tolist(), max_len=max_len)]
    state = model.encode(src, src_len)
    hidden = model.init_hidden(state)
    tok = torch.full((src.shape[0],), SOS, dtype=torch.long, device=src.device)
    if src.shape[0] == 1:  # one word (interactive use): fewest ops per step, stop at its EOS
        seq: list[int] = []
        for _ in range(max_len):
            logits, hidden = model.step(tok, hidden, state, log_probs=False)
            tok = logits.argmax(-1)
            if int(tok) == EOS:
                break
            seq.append(int(tok))
        model.train(was)
        return [seq]
    out = torch.full((src.shape[0], max_len), EOS, dtype=torch.long)
    done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
    for t in range(max_len):
        logits, hidden = model.step(tok, hidden, state, log_probs=False)
        tok = logits.argmax(-1)
        out[:, t] = tok.cpu()
        done |= tok == EOS
        if bool(done.all()):
            break
    model.train(was)
    return [_trim(r) for r in out.tolist()]


@torch.no_grad()
def beam_search(
    model: nn.Module, src: torch.Tensor, src_len: torch.Tensor, *, beam: int = 5, max_len: int = 30
) -> list[list[int]]:
    """Batched beam search (sum of log-probabilities, no length penalty): the best output of each input row.

    All ``B * beam`` hypotheses advance together; a finished hypothesis (it emitted EOS) keeps its score and
    only extends by EOS at no cost, so it competes with the live ones until the end.

    Args:
        model: an encoder-decoder following the protocol of this module.
        src: (B, S) padded input ids; src_len: (B,) lengths.
        beam: beam width >= 1 (1 is greedy decoding).
        max_len: most output tokens per row.
    """
    if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
        raise ValueError(f"beam={beam!r}, expected an integer >= 1")
    if src.shape[0] == 1 and (fast := _fast(model)) is not None:  # one word: the NumPy step (deepzip.models.seqfast)
        return [fast.beam(src[0, :int(src_len[0])].tolist(), beam=beam, max_len=max_len)]
    return [c[0] for c in beam_candidates(model, src, src_len, beam=beam, max_len=max_len)]


def beam_candidates(
    model: nn.Module, src: torch.Tensor, src_len: torch.Tensor, *, beam: int = 5, max_len: int = 30
) -> list[list[list[int]]]:
    """:func:`beam_search`'s final beam: the ``beam`` outputs of each input row, best first (the n-best list, e.g.
    for choosing among a teacher's candidates the one closest to the reference)."""
    if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
        raise ValueError(f"beam={beam!r}, expected an integer >= 1")
    was = model.training
    model.eval()
    B, K, dev = src.shape[0], beam, src.device
    state = model.expand(model.encode(src, src_len), K)
    hidden = model.init_hidden(state)
    tok = torch.full((B * K,), SOS, dtype=torch.long, device=dev)
    # only beam 0 is live at the start, so the first step does not pick K copies of the same token
    score = torch.full((B, K), float("-inf"), device=dev)
    score[:, 0] = 0.0
    seqs = torch.zeros((B * K, 0), dtype=torch.long, device=dev)
    finished = torch.zeros(B * K, dtype=torch.bool, device=dev)
    for _ in range(max_len):
        logp, hidden = model.step(tok, hidden, state)  # (B*K, V)
        V = logp.shape[-1]
        eos_only = torch.full_like(logp, float("-inf"))
        eos_only[:, EOS] = 0.0
        logp = torch.where(finished[:, None], eos_only, logp)
        cand = (score.view(B * K, 1) + logp).view(B, K * V)
        score, flat = cand.topk(K, dim=-1)  # (B, K)
        rows = (flat // V + torch.arange(B, device=dev)[:, None] * K).view(-1)  # (B*K,) source hypothesis
        tok = (flat % V).view(-1)
        seqs = torch.cat([seqs[rows], tok[:, None]], dim=1)
        finished = finished[rows] | (tok == EOS)
        hidden = model.select(hidden, rows)
        if bool(finished.all()):
            break
    out = seqs.view(B, K, -1).tolist()  # topk is sorted: beam 0 is the best
    model.train(was)
    return [[_trim(h) for h in row] for row in out]


def pad_batch(seqs: list[list[int]], *, sos: bool = False, eos: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id lists into (B, T) int64 with PAD, optionally adding SOS in front / EOS behind; returns (ids, lengths)."""
    rows = [([SOS] if sos else []) + list(s) + ([EOS] if eos else []) for s in seqs]
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    out = torch.full((len(rows), max(1, int(lengths.max()) if rows else 1)), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out, lengths


def decode_many(
    model: nn.Module,
    sources: list[list[int]],
    *,
    beam: int = 1,
    batch_size: int = 256,
    max_len: int = 30,
    device: str | torch.device = "cpu",
    progress: bool = False,
    desc: str = "decode",
) -> list[list[int]]:
    """Decode many inputs (id lists, no special tokens) in batches of similar length; outputs in input order.

    ``beam=1`` is greedy decoding, larger widths beam search.
    """
    fast = _fast(model) if batch_size == 1 and str(device) == "cpu" else None
    if fast is not None:  # one word at a time: the compiled NumPy kernels (deepzip.models.seqfast), no tensors per word
        model.eval()
        search = fast.greedy if beam == 1 else partial(fast.beam, beam=beam)
        return [search(s, max_len=max_len) for s in tqdm(sources, desc=desc, disable=not progress, leave=False,
                                                         unit="word")]
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))  # similar lengths: little padding
    out: list[list[int]] = [[] for _ in sources]
    bar = tqdm(total=len(sources), desc=desc, disable=not progress, leave=False, unit="word")
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        src, n = pad_batch([sources[i] for i in idx])
        src = src.to(device)
        if beam == 1:
            hyps = greedy_decode(model, src, n, max_len=max_len)
        else:
            hyps = beam_search(model, src, n, beam=beam, max_len=max_len)
        for i, h in zip(idx, hyps):
            out[i] = h
        bar.update(len(idx))
    bar.close()
    return out
