"""The pluggable text-model rewrite of motion captions (transformers, a path or a hub id), checked
and falling back to the rules.

Part of :mod:`i2vlab.data.motion_captions` (see there).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from i2vlab.data.motion_captions.rules import MotionCaption, RuleBasedMotionCaptioner
from i2vlab.data.motion_captions.vocab import CATEGORIES

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# model rewrite
# ----------------------------------------------------------------------------------------------
FEW_SHOT = [
    ("Young woman doing push-ups on the beach at sunset, slow motion.", "woman doing push-ups | human"),
    ("Aerial view of ocean waves crashing on the rocks, 4k", "waves crashing on rocks | nature"),
    ("Happy golden retriever dog running across a green meadow", "dog running across meadow | animal"),
    ("Beautiful sunset over the mountains, landscape background", "none"),
    ("Red sports car driving fast on a mountain road", "car driving fast | vehicle"),
]


PROMPT_HEADER = (
    "Rewrite each video caption as a short description of its motion: who or what moves and how. "
    "Drop the scene, the place, the style and the camera words. After '|', name the category: "
    + ", ".join(CATEGORIES)
    + ". Answer 'none' when nothing moves.\n"
)


def build_prompt(
    caption: str, header: str = PROMPT_HEADER, shots: Sequence[tuple[str, str]] = FEW_SHOT
) -> str:
    lines = [header]
    for c, a in shots:
        lines.append(f"Caption: {c}\nMotion: {a}\n")
    lines.append(f"Caption: {caption.strip()}\nMotion:")
    return "\n".join(lines)


_ANSWER_OK = re.compile(r"^[a-z][a-z' -]*[a-z]$")


def parse_answer(text: str, max_words: int = 10) -> tuple[str, str | None] | None:
    """``"woman doing push-ups | human"`` -> (phrase, category); ``"none"`` -> ("none", None);
    None when the answer fails the check (empty, too long, odd characters, unknown category)."""
    first = text.strip().splitlines()[0].strip() if text and text.strip() else ""
    if not first:
        return None
    phrase, _, cat = first.partition("|")
    phrase = re.sub(r"\s+", " ", phrase.strip().strip(".").lower())
    cat = cat.strip().strip(".").lower() or None
    if phrase == "none":
        return "none", None
    words = phrase.split()
    if not words or len(words) > max_words or not _ANSWER_OK.match(phrase):
        return None
    if cat is not None and cat not in CATEGORIES:
        return None
    return phrase, cat


class TransformersMotionRewriter:
    """A transformers text model as ``list[captions] -> list[answers]`` (greedy decoding).

    Args:
        model: a local folder or a hub id (``HF_HUB_OFFLINE=1`` to never reach the hub); causal LMs
            and encoder-decoder models are both accepted (chosen from the model's config).
        max_new_tokens: answer length limit. batch_size: captions per ``generate`` call (causal
            LMs are left-padded, so every row's answer starts right after its prompt).
        device, dtype: where / in which precision to run (``dtype`` a torch dtype name or None).
        prompt: ``caption -> prompt`` (default :func:`build_prompt`).
    """

    def __init__(
        self,
        model: str | Path,
        max_new_tokens: int = 24,
        batch_size: int = 8,
        device: str = "cpu",
        dtype: str | None = None,
        prompt: Callable[[str], str] = build_prompt,
        key: str = "--model",
    ) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        from i2vlab.models.loading import check_weights

        check_weights(str(model), key)
        self.name = str(model)
        config = AutoConfig.from_pretrained(self.name)
        self.seq2seq = bool(getattr(config, "is_encoder_decoder", False))
        cls = AutoModelForSeq2SeqLM if self.seq2seq else AutoModelForCausalLM
        kw = {"dtype": getattr(torch, dtype)} if dtype else {}
        self.model = cls.from_pretrained(self.name, **kw).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(self.name)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right" if self.seq2seq else "left"
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = max(1, int(batch_size))
        self.device = device
        self.prompt = prompt

    def __call__(self, captions: Sequence[str]) -> list[str]:
        import torch

        out: list[str] = []
        for s in range(0, len(captions), self.batch_size):
            prompts = [self.prompt(c) for c in captions[s : s + self.batch_size]]
            enc = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
            with torch.no_grad():
                ids = self.model.generate(
                    **enc,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            if not self.seq2seq:
                ids = ids[:, enc["input_ids"].shape[1] :]
            out += self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return out


class ModelMotionCaptioner:
    """Motion captions from a text model's answers, checked, with the rule-based captioner as
    the filter (``filter="rules"``: the model rewrites only what the rules keep) or as the
    fallback only (``filter="model"``: the model also decides; "none" drops the clip).

    ``generate``: any ``list[str] -> list[str]`` (e.g. :class:`TransformersMotionRewriter`)."""

    def __init__(
        self,
        generate: Callable[[Sequence[str]], list[str]],
        rules: RuleBasedMotionCaptioner | None = None,
        filter: str = "rules",
        max_words: int = 10,
    ) -> None:
        if filter not in ("rules", "model"):
            raise ValueError(f"filter must be 'rules' or 'model', got {filter!r}")
        self.generate = generate
        self.rules = rules or RuleBasedMotionCaptioner()
        self.filter = filter
        self.max_words = int(max_words)

    def batch(self, captions: Sequence[str]) -> list[MotionCaption]:
        ruled = self.rules.batch(captions)
        ask = [i for i, r in enumerate(ruled) if (r.keep or self.filter == "model") and r.reason != "empty"]
        answers = self.generate([captions[i] for i in ask]) if ask else []
        if len(answers) != len(ask):
            raise RuntimeError(f"the text model returned {len(answers)} answers for {len(ask)} captions")
        out = list(ruled)
        for i, text in zip(ask, answers):
            r = ruled[i]
            parsed = parse_answer(text, self.max_words)
            if parsed is None:  # failed the check: the rules decide
                out[i] = MotionCaption(**{**asdict(r), "source": "rules_fallback", "model_output": text})
                continue
            phrase, cat = parsed
            if phrase == "none":
                if self.filter == "model":
                    out[i] = MotionCaption(False, "", reason="model_none", source="model", model_output=text)
                else:  # the rules saw a motion: keep their rewrite
                    out[i] = MotionCaption(**{**asdict(r), "source": "rules_fallback", "model_output": text})
                continue
            if cat is None:
                cat = r.category if r.category is not None else self.rules.parse(phrase)[2]
            if not self.rules.selected(cat):
                out[i] = MotionCaption(False, "", cat, None, phrase, "category", "model", text)
                continue
            caption = self.rules.format(None, phrase, captions[i])
            out[i] = MotionCaption(True, caption, cat, None, phrase, "motion", "model", text)
        return out

    def __call__(self, caption: str) -> MotionCaption:
        return self.batch([caption])[0]
