"""Fast one-word decoding for :class:`~deepzip.models.seq2seq.Seq2Seq` on CPU: the same arithmetic as the torch path, in
compiled NumPy kernels (Numba, when it is installed) with the per-step work folded into a few matrix products.

At batch 1 decoding is dominated by per-operation overhead, not arithmetic: torch's ``nn.GRU`` runs its time loop as a
dozen small ops per step, and a decoding step is another twenty, each a few microseconds of dispatch. Here a whole
search (encoder, every decoder step, the beam bookkeeping) is one call into a compiled kernel, and what does not depend
on the step is folded once:

- an embedding followed by a GRU input projection is a table lookup (``emb @ W_ih^T + b_ih``, per token);
- the attention readout ``combine([ctx, h])`` is split into ``softmax(scores) @ (memory @ Wc_ctx^T) + h @ Wc_h^T``,
  so the memory's projection is made once per word, not once per step;
- in beam search every hypothesis attends over the one word's memory (no copies per beam).

The matrix products are BLAS calls either way, so a big model stays as expensive as its arithmetic. Both decoders of
the speed comparison -- the teacher's beam search and the student's greedy search -- run here at batch 1, so the
comparison is between the models, not between code paths. :func:`~deepzip.models.seq2seq.greedy_decode` and
:func:`~deepzip.models.seq2seq.beam_search` use it for a single input row when :func:`fast_decoder` supports the
model (a one-layer GRU on CPU, with Numba installed: ``pip install numba``, part of the ``g2p`` extra; :data:`COMPILED`
says whether it is); anything else takes the torch path. Outputs equal the torch path's up to float rounding (sums in
another order), which the tests check on the log-probabilities and the decoded words.

Example:
    >>> import torch
    >>> from deepzip.models.seq2seq import Seq2Seq, Seq2SeqConfig
    >>> m = Seq2Seq(Seq2SeqConfig(src_vocab=10, tgt_vocab=8, emb=8, enc=8, dec=8)).eval()
    >>> d = fast_decoder(m)
    >>> len(d.greedy([3, 4, 5], max_len=5)) <= 5 and len(d.beam([3, 4, 5], beam=3, max_len=5)) <= 5
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["COMPILED", "FastDecoder", "fast_decoder"]

SOS, EOS = 1, 2

try:  # Numba compiles the kernels below; without it fast_decoder() returns None and the torch path decodes
    from numba import njit as _njit

    COMPILED = True

    def _jit(f: Callable[..., Any]) -> Any:
        return _njit(cache=True, nogil=True)(f)
except ImportError:  # pragma: no cover - depends on the environment
    COMPILED = False

    def _jit(f: Callable[..., Any]) -> Any:
        return f


# ---------------------------------------------------------------------------------------------------- kernels
# Matrix products are BLAS calls (``@`` on contiguous float32 arrays); the elementwise work is one loop per product.

@_jit
def _gru(gi: np.ndarray, gi_rows: np.ndarray, gh: np.ndarray, b_hh: np.ndarray, h: np.ndarray) -> np.ndarray:
    """GRU update of rows ``h`` (R, H) (torch's gate order r, z, n): input projections ``gi[gi_rows[i]]`` (a table
    row per hypothesis), recurrent projections ``gh`` (R, 3H) without their bias ``b_hh``."""
    R, H = h.shape
    out = np.empty_like(h)
    for i in range(R):
        a = gi_rows[i]
        for j in range(H):
            r = 1.0 / (1.0 + math.exp(-(gi[a, j] + gh[i, j] + b_hh[j])))
            z = 1.0 / (1.0 + math.exp(-(gi[a, H + j] + gh[i, H + j] + b_hh[H + j])))
            n = math.tanh(gi[a, 2 * H + j] + r * (gh[i, 2 * H + j] + b_hh[2 * H + j]))
            out[i, j] = n + z * (h[i, j] - n)  # (1 - z) n + z h
    return out


@_jit
def _encode(x: np.ndarray, enc_in_f: np.ndarray, enc_in_b: np.ndarray, hh_f: np.ndarray, hh_b: np.ndarray,
            bh_f: np.ndarray, bh_b: np.ndarray, bridge_w: np.ndarray, bridge_b: np.ndarray, attn_w: np.ndarray,
            comb_ctx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Letter ids (S,) -> keys transposed (D, S), projected memory (S, D), initial decoder state (1, D)."""
    S, E = x.shape[0], hh_f.shape[0]
    memory = np.empty((S, 2 * E), np.float32)
    hf = np.zeros((1, E), np.float32)
    hb = np.zeros((1, E), np.float32)
    for t in range(S):
        hf = _gru(enc_in_f, x[t:t + 1], hf @ hh_f, bh_f, hf)
        memory[t, :E] = hf[0]
        s = S - 1 - t
        hb = _gru(enc_in_b, x[s:s + 1], hb @ hh_b, bh_b, hb)
        memory[s, E:] = hb[0]
    last = np.empty((1, 2 * E), np.float32)
    last[0, :E] = hf[0]
    last[0, E:] = hb[0]
    h0 = last @ bridge_w
    for j in range(h0.shape[1]):
        h0[0, j] = math.tanh(h0[0, j] + bridge_b[j])
    return np.ascontiguousarray((memory @ attn_w).T), memory @ comb_ctx, h0


@_jit
def _step(tok: np.ndarray, h: np.ndarray, keys_t: np.ndarray, mem_c: np.ndarray, dec_in: np.ndarray,
          dec_hh: np.ndarray, dec_bh: np.ndarray, comb_h: np.ndarray, comb_b: np.ndarray, out_w: np.ndarray,
          out_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tokens (R,), hidden (R, D) of hypotheses of one word -> logits (R, V), new hidden (R, D)."""
    h = _gru(dec_in, tok, h @ dec_hh, dec_bh, h)
    p = h @ keys_t  # (R, S) attention scores -> softmax in place
    for i in range(p.shape[0]):
        m = p[i].max()
        tot = 0.0
        for k in range(p.shape[1]):
            p[i, k] = math.exp(p[i, k] - m)
            tot += p[i, k]
        for k in range(p.shape[1]):
            p[i, k] /= tot
    u = p @ mem_c
    hc = h @ comb_h
    for i in range(u.shape[0]):
        for j in range(u.shape[1]):
            u[i, j] = math.tanh(u[i, j] + hc[i, j] + comb_b[j])
    z = u @ out_w
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            z[i, j] += out_b[j]
    return z, h


@_jit
def _greedy(x: np.ndarray, max_len: int, enc_in_f: np.ndarray, enc_in_b: np.ndarray, hh_f: np.ndarray,
            hh_b: np.ndarray, bh_f: np.ndarray, bh_b: np.ndarray, bridge_w: np.ndarray, bridge_b: np.ndarray,
            attn_w: np.ndarray, comb_ctx: np.ndarray, dec_in: np.ndarray, dec_hh: np.ndarray, dec_bh: np.ndarray,
            comb_h: np.ndarray, comb_b: np.ndarray, out_w: np.ndarray, out_b: np.ndarray) -> np.ndarray:
    keys_t, mem_c, h = _encode(x, enc_in_f, enc_in_b, hh_f, hh_b, bh_f, bh_b, bridge_w, bridge_b, attn_w, comb_ctx)
    out = np.empty(max_len, np.int64)
    tok = np.full(1, SOS, np.int64)
    n = 0
    for _ in range(max_len):
        z, h = _step(tok, h, keys_t, mem_c, dec_in, dec_hh, dec_bh, comb_h, comb_b, out_w, out_b)
        k = np.argmax(z[0])
        if k == EOS:
            break
        out[n] = k
        n += 1
        tok[0] = k
    return out[:n].copy()


@_jit
def _beam(x: np.ndarray, K: int, max_len: int, enc_in_f: np.ndarray, enc_in_b: np.ndarray, hh_f: np.ndarray,
          hh_b: np.ndarray, bh_f: np.ndarray, bh_b: np.ndarray, bridge_w: np.ndarray, bridge_b: np.ndarray,
          attn_w: np.ndarray, comb_ctx: np.ndarray, dec_in: np.ndarray, dec_hh: np.ndarray, dec_bh: np.ndarray,
          comb_h: np.ndarray, comb_b: np.ndarray, out_w: np.ndarray, out_b: np.ndarray) -> np.ndarray:
    keys_t, mem_c, h0 = _encode(x, enc_in_f, enc_in_b, hh_f, hh_b, bh_f, bh_b, bridge_w, bridge_b, attn_w, comb_ctx)
    V = out_w.shape[1]
    h = np.empty((K, h0.shape[1]), np.float32)
    for k in range(K):
        h[k] = h0[0]
    tok = np.full(K, SOS, np.int64)
    score = np.full(K, -np.inf, np.float32)
    score[0] = 0.0  # one live hypothesis at the start, so the first step does not pick K copies of one token
    seqs = np.full((K, max_len), EOS, np.int64)
    finished = np.zeros(K, np.bool_)
    cand = np.empty(K * V, np.float32)
    for t in range(max_len):
        z, h = _step(tok, h, keys_t, mem_c, dec_in, dec_hh, dec_bh, comb_h, comb_b, out_w, out_b)
        for k in range(K):
            if finished[k]:  # a finished hypothesis extends by EOS only, at no cost
                for v in range(V):
                    cand[k * V + v] = -np.inf
                cand[k * V + EOS] = score[k]
            else:
                m = z[k].max()
                tot = 0.0
                for v in range(V):
                    tot += math.exp(z[k, v] - m)
                lse = m + math.log(tot)
                for v in range(V):
                    cand[k * V + v] = score[k] + (z[k, v] - lse)
        top = np.argsort(-cand, kind="mergesort")[:K]  # best first, ties by position
        rows = top // V
        tok = top % V
        score = cand[top]
        seqs = seqs[rows]
        seqs[:, t] = tok
        finished = finished[rows] | (tok == EOS)
        h = h[rows]
        if finished.all():
            break
    n = 0
    while n < max_len and seqs[0, n] != EOS:
        n += 1
    return seqs[0, :n].copy()


# ---------------------------------------------------------------------------------------------------- the decoder
def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())


class FastDecoder:
    """A one-layer GRU :class:`~deepzip.models.seq2seq.Seq2Seq`'s weights, folded and copied into float32 arrays, for
    decoding one word at a time (see the module docstring). Build it with :func:`fast_decoder`, which caches it on the
    model until a weight changes."""

    def __init__(self, model: nn.Module) -> None:
        enc, dec = model.encoder, model.decoder
        src_emb, tgt_emb = _np(model.src_emb.weight), _np(model.tgt_emb.weight)
        E = enc.hidden_size
        comb = _np(model.combine.weight)  # (D, 2E + D)

        def c(a: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(a, np.float32)

        self.enc = tuple(c(a) for a in (
            src_emb @ _np(enc.weight_ih_l0).T + _np(enc.bias_ih_l0),  # per-letter input projections (V, 3E)
            src_emb @ _np(enc.weight_ih_l0_reverse).T + _np(enc.bias_ih_l0_reverse),
            _np(enc.weight_hh_l0).T, _np(enc.weight_hh_l0_reverse).T,
            _np(enc.bias_hh_l0), _np(enc.bias_hh_l0_reverse),
            _np(model.bridge.weight).T, _np(model.bridge.bias),
            _np(model.attn.weight).T,  # (2E, D): keys
            comb[:, :2 * E].T,  # (2E, D): the context's part of combine
        ))
        self.dec = tuple(c(a) for a in (
            tgt_emb @ _np(dec.weight_ih_l0).T + _np(dec.bias_ih_l0),  # per-token input projections (V, 3D)
            _np(dec.weight_hh_l0).T, _np(dec.bias_hh_l0),
            comb[:, 2 * E:].T, _np(model.combine.bias),  # the decoder state's part of combine
            _np(model.out.weight).T, _np(model.out.bias),
        ))

    def greedy(self, src: list[int], *, max_len: int = 30) -> list[int]:
        """Greedy output of one word (token ids without SOS/EOS)."""
        return _greedy(np.asarray(src, np.int64), max_len, *self.enc, *self.dec).tolist()

    def beam(self, src: list[int], *, beam: int = 5, max_len: int = 30) -> list[int]:
        """Beam search of one word, as :func:`deepzip.models.seq2seq.beam_search` (sum of log-probabilities, no length
        penalty; a finished hypothesis keeps its score and competes until the end): the best output."""
        if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
            raise ValueError(f"beam={beam!r}, expected an integer >= 1")
        return _beam(np.asarray(src, np.int64), beam, max_len, *self.enc, *self.dec).tolist()

    def log_probs(self, src: list[int], prefix: list[int]) -> np.ndarray:
        """Log-probabilities (len(prefix) + 1, V) of every next token after SOS + ``prefix``, teacher-forced (what the
        tests compare with the torch model's)."""
        keys_t, mem_c, h = _encode(np.asarray(src, np.int64), *self.enc)
        rows = []
        for tok in [SOS, *prefix]:
            z, h = _step(np.full(1, tok, np.int64), h, keys_t, mem_c, *self.dec)
            z = z[0] - z[0].max()
            rows.append(z - np.log(np.exp(z).sum()))
        return np.stack(rows)


def fast_decoder(model: nn.Module) -> FastDecoder | None:
    """The :class:`FastDecoder` of ``model`` (cached on it, rebuilt when any parameter or buffer changed), or None
    where the model is not a one-layer GRU :class:`~deepzip.models.seq2seq.Seq2Seq` on CPU or Numba is not installed."""
    cfg = getattr(model, "config", None)
    if not COMPILED or getattr(cfg, "cell", None) != "gru" or getattr(cfg, "layers", None) != 1 \
            or not hasattr(model, "decoder"):
        return None
    tensors = [*model.parameters(), *model.buffers()]  # buffers: pruning masks
    if any(t.device.type != "cpu" for t in tensors):
        return None
    version = tuple((id(t), t._version) for t in tensors)
    cached = getattr(model, "_deepzip_fast", None)
    if cached is not None and cached[0] == version:
        return cached[1]
    with torch.no_grad():
        dec = FastDecoder(model)
    object.__setattr__(model, "_deepzip_fast", (version, dec))
    return dec
