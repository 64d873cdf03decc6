"""Text normalisation shared by the data layer (related queries) and evaluation (categories, baselines)."""

from __future__ import annotations

import re
import unicodedata

_PUNCT = re.compile(r"[^\w\s]+", re.UNICODE)
_WS = re.compile(r"\s+")


def normalise(text: object) -> str:
    """NFKC, lower-case, punctuation → space, whitespace collapsed and stripped. ``None`` → ``""``."""
    if text is None:
        return ""
    s = unicodedata.normalize("NFKC", str(text)).lower()
    return _WS.sub(" ", _PUNCT.sub(" ", s)).strip()
