"""Text handling shared by the CTR model and the rule rewards: safe decoding, tokens, hashed character n-grams.

Everything here is total: any input (``None``, bytes that are not UTF-8, lone surrogates, 10 kB strings, numbers)
gives a defined output, never an exception.

* :func:`to_text` — anything → a clean ``str`` (bytes decoded as UTF-8 with U+FFFD for bad bytes, surrogates
  replaced, NFKC-normalised, whitespace collapsed).
* :func:`tokens` — ROUGE-L / length tokens: **each CJK character is one token**, other text splits into words
  (letters/digits runs), lower-cased. Pure Chinese text is therefore character-level, English word-level, and mixed
  text works too.
* :func:`ngram_ids` — the CTR model's and the repetition scorer's text features: character n-grams
  (``n_min..n_max``) of `` text `` plus word unigrams, hashed with CRC-32 (stable across processes and machines,
  unlike Python's salted ``hash``) into ``buckets``. Unseen text is featurised like seen text.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from functools import lru_cache
from typing import Any

import numpy as np

REPLACEMENT = "\ufffd"
_WS = re.compile(r"\s+")
# CJK unified ideographs (+ ext. A, compatibility), kana, hangul: one token per character.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+", re.UNICODE)
_CJK_CHAR = re.compile(rf"[{_CJK}]")


def to_text(x: Any, max_chars: int | None = None) -> str:
    """Any value → a normalised single-line string (see module docstring); ``max_chars`` cuts the result."""
    if x is None:
        return ""
    if isinstance(x, bytes | bytearray | memoryview):
        s = bytes(x).decode("utf-8", errors="replace")
    elif isinstance(x, str):
        s = x
    else:
        s = str(x)
    if max_chars is not None and len(s) > 4 * max_chars:
        s = s[: 4 * max_chars]  # bound the work on huge inputs before normalising
    s = s.encode("utf-8", errors="replace").decode("utf-8")  # lone surrogates → "?"
    s = unicodedata.normalize("NFKC", s)
    s = "".join(ch if ch.isprintable() or ch.isspace() else " " for ch in s)
    s = _WS.sub(" ", s).strip()
    return s[:max_chars] if max_chars is not None else s


def tokens(text: Any) -> list[str]:
    """ROUGE-L tokens: CJK characters one by one, other words whole, lower-cased (see module docstring)."""
    return _TOKEN.findall(to_text(text).lower())


def length_units(text: Any, cjk_char_units: float) -> float:
    """Query length in "units": a word counts 1, a CJK character ``cjk_char_units``."""
    toks = tokens(text)
    n_cjk = sum(1 for t in toks if _CJK_CHAR.fullmatch(t))
    return (len(toks) - n_cjk) + cjk_char_units * n_cjk


def hash_token(s: str, buckets: int) -> int:
    """Stable hash bucket of a string (CRC-32; the same on every process and machine)."""
    return zlib.crc32(s.encode("utf-8", errors="replace")) % buckets


@lru_cache(maxsize=262_144)
def ngram_ids(text: str, buckets: int, n_min: int = 2, n_max: int = 4, max_chars: int = 128) -> np.ndarray:
    """Sorted unique hashed ids of ``text``'s char n-grams (of `` text ``) and word unigrams (prefixed ``w:``).
    Empty text → empty array. Cached: behaviours and reference queries repeat a lot."""
    t = to_text(text, max_chars).lower()
    if not t:
        return np.zeros(0, dtype=np.int64)
    padded = f" {t} "
    grams = {padded[i : i + n] for n in range(n_min, n_max + 1) for i in range(len(padded) - n + 1)}
    grams.update("w:" + w for w in _TOKEN.findall(t))
    ids = np.unique(np.fromiter((hash_token(g, buckets) for g in grams), dtype=np.int64, count=len(grams)))
    ids.setflags(write=False)
    return ids


def ngram_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two binary n-gram sets (sorted unique id arrays): |a ∩ b| / sqrt(|a|·|b|); 0 if either is empty."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    return float(len(np.intersect1d(a, b, assume_unique=True)) / np.sqrt(len(a) * len(b)))


def pair_cosines(sets: list[np.ndarray], left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Vectorised :func:`ngram_cosine` for many pairs ``(sets[left[k]], sets[right[k]])``: the sets become rows of a
    binary sparse matrix, and each pair's shared count is the row sum of the element-wise product."""
    from scipy import sparse

    left, right = np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64)
    if len(left) == 0 or not sets:
        return np.zeros(len(left), dtype=np.float32)
    lens = np.array([len(s) for s in sets], dtype=np.int64)
    flat = np.concatenate([*sets, np.zeros(0, np.int64)]).astype(np.int64)
    width = int(flat.max()) + 1 if len(flat) else 1
    m = sparse.csr_matrix((np.ones(len(flat), np.float32), flat, np.concatenate([[0], np.cumsum(lens)])),
                          shape=(len(sets), width))
    shared = np.asarray(m[left].multiply(m[right]).sum(axis=1)).ravel()
    denom = np.sqrt(lens[left] * lens[right]).astype(np.float64)
    return np.where(denom > 0, shared / np.maximum(denom, 1), 0.0).astype(np.float32)
