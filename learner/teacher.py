"""Rationale teachers for AIGQ-Think's reasoning augmentation (paper Eq. 7: r_k = LLM_reason(x, T_k, Q_k)).

A teacher is any callable ``(prompt, groups) -> list[str]``, one rationale per interest point (T_k, Q_k). The default,
``template_teacher``, writes a short rationale from what the prompt shows (the trigger behaviours' type and text):
it never sees the simulator's hidden user model. A real LLM teacher plugs in as ``sft.teacher=pkg.module:function``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

from aigq.data import prompt as P

Teacher = Callable[[str, Sequence[P.Group]], list[str]]
_MAX_CONTENT = 40  # characters of a behaviour's text quoted in a rationale ([GAP], ours: keeps rationales short)


def template_teacher(prompt: str, groups: Sequence[P.Group]) -> list[str]:
    """``#2 click navy lamp; #5 search lamps -> same interest.`` for a group with triggers; a group without any
    observed trigger is explained as exploration."""
    shown = P.parse_behaviours(prompt)
    out = []
    for triggers, _queries in groups:
        cited = [f"#{i} {shown[i][1]} {shown[i][2][:_MAX_CONTENT]}" for i in triggers if i in shown]
        out.append("; ".join(cited) + " -> same interest." if cited else "no trigger -> explore related.")
    return out


def load_teacher(spec: str) -> Teacher:
    """``"template"`` or ``"package.module:function"``."""
    if spec == "template":
        return template_teacher
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"sft.teacher={spec!r}: expected 'template' or 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"sft.teacher={spec!r}: cannot import it ({exc})") from exc
    if not callable(fn):
        raise ValueError(f"sft.teacher={spec!r} is not callable")
    return fn
