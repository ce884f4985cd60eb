"""The rule-based motion captioner (the default: deterministic, no model).

Part of :mod:`i2vlab.data.motion_captions` (see there).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from i2vlab.data.motion_captions.vocab import (
    _AUX,
    _BOILERPLATE,
    _CAMERA_VERBS,
    _COMPOUND_NOUNS,
    _DETERMINERS,
    _DIRECTIONS,
    _GERUNDS,
    _NEEDS_OBJECT,
    _NUMBERS,
    _PUNCT,
    _SCENE,
    _STATIC,
    _STOP,
    _THIRD,
    _TOKEN,
    CATEGORIES,
    COLLECTIVES,
    SUBJECTS,
    gerund,
)

log = logging.getLogger(__name__)


@dataclass
class MotionCaption:
    """The decision for one caption.

    ``keep``: the caption describes motion. ``caption``: the motion-first caption written to the
    new shard ("" when dropped). ``reason``: ``motion`` (kept), ``no_motion``, ``category`` (a
    category outside the selection), ``empty`` or ``model_none`` (the model said no motion).
    ``source``: ``rules``, ``model``, or ``rules_fallback`` (the model's answer failed the check)."""

    keep: bool
    caption: str
    category: str | None = None
    subject: str | None = None
    motion: str | None = None
    reason: str = "motion"
    source: str = "rules"
    model_output: str | None = None


def normalise(caption: str) -> str:
    text = caption.lower().replace("\u2019", "'").replace("_", " ")
    text = _BOILERPLATE.sub(" ", text)
    return re.sub(r"\s+", " ", text).strip()


def tokens(caption: str) -> list[str]:
    return _TOKEN.findall(normalise(caption))


def _verb_at(toks: Sequence[str], i: int) -> str | None:
    """The base form if ``toks[i]`` is used as a motion verb, else None."""
    t = toks[i]
    nxt = toks[i + 1] if i + 1 < len(toks) else ""
    prev = toks[i - 1] if i > 0 else ""
    if t in _STATIC:
        return None
    if t in _GERUNDS:
        if nxt in _COMPOUND_NOUNS:
            return None  # "swimming pool", "running track"
        base = _GERUNDS[t]
        if base in _NEEDS_OBJECT and (not nxt or nxt in _PUNCT or nxt in _STOP):
            return None  # "doing" with nothing done
        return base
    if t in _THIRD and prev in SUBJECTS:
        base = _THIRD[t]
        # a plural noun that is also a verb form ("ocean waves", "fans") after another noun:
        # a verb only after a person or an animal ("man waves"), or when a direction/object follows
        if t in SUBJECTS and SUBJECTS[prev] not in ("human", "animal", "camera"):
            return None
        if base in _NEEDS_OBJECT and (not nxt or nxt in _PUNCT or nxt in _STOP):
            return None
        return base
    return None


def _subject_before(toks: Sequence[str], i: int) -> tuple[str | None, str | None]:
    """(subject phrase, category) of the nearest subject noun before position ``i`` in the clause."""
    j = i - 1
    while j >= 0 and toks[j] not in _PUNCT:
        w = toks[j]
        if w in SUBJECTS:
            words = [w]
            k = j - 1
            # "man and woman", "dog and cat"
            if k >= 1 and toks[k] == "and" and toks[k - 1] in SUBJECTS:
                words = [toks[k - 1], "and", w]
                k -= 2
            # "group of people", "two men"
            if k >= 1 and toks[k] == "of" and toks[k - 1] in COLLECTIVES:
                words = [toks[k - 1], "of", *words]
            elif k >= 0 and (toks[k].isdigit() or toks[k] in _NUMBERS):
                words = [toks[k], *words]
            return " ".join(words), SUBJECTS[w]
        j -= 1
    return None, None


def _phrase_after(toks: Sequence[str], i: int, max_words: int) -> list[str]:
    """The verb's object / direction words after position ``i`` (determiners dropped).

    A direction with its object ("across meadow") is kept only when nothing else follows the verb
    and the object is at most two words; a longer one names the scene ("over a noisy background")."""
    out: list[str] = []
    j = i + 1
    while j < len(toks) and len(out) < max_words:
        w = toks[j]
        if w in _PUNCT:
            break
        if j == i + 1 and w == "in" and _GERUNDS.get(toks[i], _THIRD.get(toks[i])) == "zoom":
            out.append(w)  # "zooming in"
            j += 1
            continue
        if w == "and" and j + 1 < len(toks) and toks[j + 1] in _GERUNDS and _verb_at(toks, j + 1):
            break  # a second motion: the caller joins it
        if w in _DIRECTIONS:
            obj, k = [], j + 1
            while k < len(toks) and toks[k] not in _PUNCT and toks[k] not in _STOP and toks[k] not in _AUX:
                if toks[k] in _DIRECTIONS or (toks[k] in _GERUNDS and _verb_at(toks, k)):
                    break
                if toks[k] not in _DETERMINERS:
                    obj.append(toks[k])
                k += 1
            if not out and len(obj) <= 2 and len(obj) + 1 <= max_words and not _SCENE & set(obj):
                out += [w, *obj]
            elif not obj:
                out.append(w)  # "turning around", "walking away"
            break
        if w in _STOP or w in _AUX:
            break
        if w in _GERUNDS and _verb_at(toks, j):
            break
        if w not in _DETERMINERS:
            out.append(w)
        j += 1
    return out


class RuleBasedMotionCaptioner:
    """Keep captions with a motion verb; rewrite them ``<subject> <verb-ing> [object]``.

    Args:
        categories: keep only these categories (default: all of :data:`CATEGORIES`; a motion
            without a recognised subject has category None and is kept only when ``None`` is listed
            or no selection is given).
        style: ``motion`` (the motion phrase only, the paper's "purer dynamics wording") or
            ``motion_first`` (the phrase, then the original caption after ". ").
        max_object_words: at most this many words after each verb.
        max_motions: join up to this many motions of one subject ("man running and jumping").
    """

    def __init__(
        self,
        categories: Iterable[str | None] | None = None,
        style: str = "motion",
        max_object_words: int = 3,
        max_motions: int = 2,
    ) -> None:
        if style not in ("motion", "motion_first"):
            raise ValueError(f"style must be 'motion' or 'motion_first', got {style!r}")
        cats = None if categories is None else set(categories)
        unknown = (cats or set()) - set(CATEGORIES) - {None}
        if unknown:
            raise ValueError(f"unknown categories {sorted(unknown)}; known: {list(CATEGORIES)}")
        self.categories = cats
        self.style = style
        self.max_object_words = int(max_object_words)
        self.max_motions = int(max_motions)

    def parse(self, caption: str) -> tuple[str | None, str | None, str | None]:
        """(subject, motion phrase, category) of the first motion of a subject in ``caption``
        (a camera move only when no subject moves); Nones if no motion."""
        toks = tokens(caption)
        found = []
        for i in range(len(toks)):
            verb = _verb_at(toks, i)
            if not verb:
                continue
            subject, category = _subject_before(toks, i)
            if category is None and verb in _CAMERA_VERBS:
                subject, category = "camera", "camera"
            found.append((i, verb, subject, category))
            if category not in (None, "camera"):
                break
        if not found:
            return None, None, None
        i, verb, subject, category = next(
            (f for f in found if f[3] not in (None, "camera")), next((f for f in found if f[3]), found[0])
        )
        parts = [gerund(verb), *_phrase_after(toks, i, self.max_object_words)]
        # further motions of the same subject: "... running and jumping"
        j, n = i + 1, 1
        while n < self.max_motions and j < len(toks) and toks[j] not in _PUNCT:
            if toks[j] == "and" and j + 1 < len(toks) and _verb_at(toks, j + 1):
                more = _verb_at(toks, j + 1)
                parts += ["and", gerund(more), *_phrase_after(toks, j + 1, self.max_object_words)]
                n += 1
                j += 2
                continue
            if toks[j] in _STOP and toks[j] != "and":
                break
            j += 1
        return subject, " ".join(parts), category

    def format(self, subject: str | None, motion: str, original: str) -> str:
        phrase = f"{subject} {motion}" if subject else motion
        if self.style == "motion_first":
            rest = original.strip()
            return f"{phrase}. {rest}" if rest else phrase
        return phrase

    def selected(self, category: str | None) -> bool:
        return self.categories is None or category in self.categories

    def __call__(self, caption: str) -> MotionCaption:
        if not caption or not caption.strip():
            return MotionCaption(False, "", reason="empty")
        subject, motion, category = self.parse(caption)
        if motion is None:
            return MotionCaption(False, "", reason="no_motion")
        if not self.selected(category):
            return MotionCaption(False, "", category, subject, motion, reason="category")
        return MotionCaption(True, self.format(subject, motion, caption), category, subject, motion)

    def batch(self, captions: Sequence[str]) -> list[MotionCaption]:
        return [self(c) for c in captions]
