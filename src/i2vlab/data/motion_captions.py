"""Motion captions for decoupled text-based motion control (DynamiCrafter §5, "DCP").

DynamiCrafter's captions mix a lot of scene description with a little motion description, so a
model trained on them learns to ignore the motion words. For image animation the scene is already
in the conditioning image; DynamiCrafter_DCP is trained on a filtered, re-annotated WebVid-10M
whose captions carry purer dynamics wording ("man doing push-ups") plus a category ("human").
The paper gives no filtering rules, no prompt and no vocabulary: this module is our own
reconstruction of that step (nothing here is copied from, or checked against, an official code
release; none was published).

- :class:`RuleBasedMotionCaptioner` (the default, deterministic, no model): keeps a caption when
  it holds a motion verb from :data:`MOTION_VERBS` (gerund, or third person after a subject) and
  rewrites it motion first, ``<subject> <verb-ing> [object | direction]``, dropping articles,
  adjectives before the subject, places, times and stock-footage words ("4k", "slow motion").
  The category is that of the subject noun (:data:`SUBJECTS`), or ``camera`` for pans / zooms.
- :class:`TransformersMotionRewriter` (pluggable): any local or hub text model that transformers
  loads (causal LM or encoder-decoder, a path or a hub id), asked with a few-shot prompt for
  ``<motion phrase> | <category>`` (or ``none``). Its answers are checked (length, characters,
  category); an answer that fails the check falls back to the rule-based rewrite and is counted.
  Any callable ``list[str] -> list[str]`` can take its place (:class:`ModelMotionCaptioner`).
- :func:`process_shards`: reads webdataset shards (faults counted, never fatal), keeps the clips
  whose caption describes motion, writes new shards (the mp4 bytes untouched; ``.txt`` = the
  motion caption; ``.json`` + ``motion_caption``, ``motion_category``, ``original_caption``,
  ``motion_source``), ``captions.csv`` (every clip and its decision) and ``report.json``.
- :func:`motion_control_cases`: the image x motion-prompt case list of the motion-control
  evaluation (``conf/eval/dynamicrafter_motion_control.yaml``).

CLI: ``scripts/motion_captions.py``.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from i2vlab.errors import UserError

log = logging.getLogger(__name__)


class OutputExistsError(UserError, FileExistsError):
    """The output folder already holds shards."""


#: category labels (the paper's example: "human")
CATEGORIES: tuple[str, ...] = ("human", "animal", "vehicle", "nature", "object", "camera")

_SUBJECT_WORDS: dict[str, str] = {
    "human": (
        "man men woman women person people persons guy guys girl girls boy boys child children kid kids "
        "baby babies toddler toddlers teenager teenagers teen teens lady ladies gentleman gentlemen "
        "businessman businessmen businesswoman businesswomen worker workers couple couples family "
        "families friends friend student students athlete athletes player players dancer dancers "
        "runner runners swimmer swimmers surfer surfers skier skiers skater skaters cyclist cyclists "
        "biker bikers rider riders driver drivers chef chefs cook cooks doctor doctors nurse nurses "
        "soldier soldiers police policeman policemen farmer farmers mother mothers father fathers "
        "mom dad daughter daughters son sons grandmother grandfather granddaughter grandson "
        "bride groom model models musician musicians singer singers guitarist drummer pianist "
        "boxer boxers fighter fighters crowd audience tourist tourists hiker hikers climber climbers "
        "actor actress senior seniors elderly adult adults player footballer gymnast gymnasts "
        "hand hands finger fingers face faces arm arms leg legs foot feet head heads hair eye eyes "
        "lips mouth"
    ),
    "animal": (
        "dog dogs puppy puppies cat cats kitten kittens bird birds horse horses cow cows sheep goat goats "
        "pig pigs chicken chickens hen hens duck ducks goose geese swan swans fish fishes shark sharks "
        "dolphin dolphins whale whales turtle turtles frog frogs snake snakes lizard lizards monkey "
        "monkeys ape apes gorilla gorillas lion lions tiger tigers bear bears elephant elephants "
        "giraffe giraffes zebra zebras deer fox foxes wolf wolves rabbit rabbits squirrel squirrels "
        "mouse mice rat rats butterfly butterflies bee bees insect insects spider spiders ant ants "
        "eagle eagles owl owls parrot parrots pigeon pigeons seagull seagulls gull gulls penguin "
        "penguins seal seals crab crabs jellyfish octopus camel camels kangaroo kangaroos animal animals "
        "flock herd cattle calf calves lamb lambs pony ponies donkey donkeys bull bulls"
    ),
    "vehicle": (
        "car cars truck trucks bus buses train trains tram trams boat boats ship ships yacht yachts "
        "plane planes airplane airplanes aircraft jet jets helicopter helicopters drone drones bike "
        "bikes bicycle bicycles motorcycle motorcycles motorbike scooter scooters taxi taxis van vans "
        "tractor tractors vehicle vehicles traffic subway ferry ferries sailboat sailboats kayak "
        "kayaks canoe canoes rocket rockets balloon balloons excavator crane cranes"
    ),
    "nature": (
        "water waves wave sea ocean river rivers stream streams waterfall waterfalls lake clouds cloud "
        "sky fog mist smoke fire flame flames rain snow snowflakes wind storm lightning sun sunlight "
        "moon stars tide leaves leaf tree trees branches branch grass flowers flower plant plants "
        "wheat field lava sand dust ice steam bubbles"
    ),
    "object": (
        "ball balls flag flags wheel wheels fan fans clock clocks candle candles windmill windmills "
        "turbine turbines paper pages book curtain curtains pendulum coin coins dice toy toys top "
        "globe earth planet liquid coffee tea wine milk paint ink glass robot robots machine machines "
        "gears gear object objects circle circles square squares triangle triangles rectangle "
        "rectangles shape shapes disc disk cube cubes"
    ),
    "camera": "camera cam",
}

#: subject noun -> category
SUBJECTS: dict[str, str] = {w: cat for cat, words in _SUBJECT_WORDS.items() for w in words.split()}

#: collective nouns kept before "of <subject>" ("group of people dancing")
COLLECTIVES = frozenset(
    "group groups crowd couple pair family team flock herd school swarm pack line row bunch".split()
)

_VERBS = (
    # body / people
    "walk run jog sprint jump hop skip dance wave clap swim dive fly drive ride climb crawl fall "
    "roll spin rotate turn twist shake nod talk speak sing laugh smile cry shout scream yell "
    "whisper eat drink chew bite cook cut chop slice stir pour mix knead bake fry grill type write "
    "draw paint play throw catch kick punch hit box fight wrestle push pull lift carry drag swing "
    "hug kiss embrace skate ski snowboard surf sail row paddle stretch exercise train practice "
    "practise bow kneel crouch squat bend lean wink blink breathe yawn sneeze cough wash brush comb "
    "shave sew knit juggle bounce dribble shoot serve pitch bat golf bowl hike march step stomp "
    "tiptoe chase hunt pounce peck wag gallop trot graze flap hover glide soar land launch "
    "accelerate race speed pass overtake park reverse brake steer pedal cycle slide skid drift "
    "float sink rise flow splash ripple crash break burst explode erupt burn flicker blow sway "
    "flutter wiggle wobble vibrate tremble shiver move shift pan zoom tilt orbit track dolly "
    "approach enter leave exit cross circle wander stroll tumble flip somersault cartwheel spin "
    "gesture point beckon salute applaud cheer celebrate greet shake stir drip melt freeze bloom "
    "grow open close fold unfold unroll tie untie pick pluck strum drum plant dig rake mow sweep "
    "mop scrub wipe fill empty spray sprinkle water feed pet stroke scratch lick sniff bark meow "
    "roar howl chirp buzz crawl slither swoop dart zigzag spiral"
)
#: verbs that double their last consonant in the gerund (run -> running)
_DOUBLING = frozenset(
    "run jog hop skip swim clap chop stir hit spin nod grab rub drum step flap trot wag "
    "shop skid dig plan pat tap trim wrap zip drip flip dip sit set cut bat jam sob beg pet pan".split()
)
#: gerunds that are motion only with an object ("doing push-ups", "making a cake", "playing guitar")
_NEEDS_OBJECT = frozenset("do make play perform".split())
#: gerund + noun compounds that name a thing, not a motion ("swimming pool", "parking lot")
_COMPOUND_NOUNS = frozenset(
    "pool pools lot lots room rooms table tables board boards track tracks mall stick sticks bag bags "
    "costume costumes suit suits shoes boots trail trails path paths area areas machine machines "
    "equipment class classes lesson lessons gear mat mats session sessions competition team field "
    "fields school ring rings floor floors stage bike bikes car lane lanes dress dresses wear "
    "hall halls studio studios center centre club clubs range glasses goggles cap caps".split()
)
_STATIC = frozenset(
    "sitting standing posing lying looking holding wearing thinking sleeping waiting resting "
    "staring watching smiling relaxing working reading listening showing using".split()
)

_NUMBERS = frozenset("two three four five six seven eight nine ten several many few".split())
#: camera moves: a motion without a subject is the camera's ("panning across city skyline")
_CAMERA_VERBS = frozenset("pan zoom tilt dolly track orbit".split())
_AUX = frozenset("is are was were be been being am".split())
_DETERMINERS = frozenset("a an the his her their its my your our this that these those some".split())
#: words that end a motion phrase (places, times, manners that are not motion)
_STOP = frozenset(
    "in on at near under above below beneath inside outside during by behind beside besides between "
    "against with without while as when where which who that of for from before after than like "
    "and or but because if then so during amid among while to".split()
)
#: directions kept in the phrase, with up to two following words ("walking across street")
_DIRECTIONS = frozenset(
    "into across through towards toward along past over around up down away off back out onto "
    "forward forwards backward backwards upward upwards downward downwards sideways".split()
)
#: nouns that name the scene: a direction towards them is not kept ("rotating over a noise background")
_SCENE = frozenset("background backdrop backgrounds landscape scenery wallpaper".split())
#: stock-footage words and phrases dropped before parsing
_BOILERPLATE = re.compile(
    r"\b(?:(?:in\s+)?slow[\s-]*(?:motion|mo)|4k|8k|uhd|ultra\s+hd|full\s+hd|hd|1080p|720p|"
    r"stock\s+(?:footage|video)|footage|video|clip|time[\s-]*lapse|timelapse|hyperlapse|"
    r"close[\s-]*up|closeup|extreme|shot|view|aerial|drone\s+shot|cinematic|concept|"
    r"copy\s+space|isolated|slowmo|loop(?:able)?|seamless|animation|b[\s-]*roll)\b"
)


def gerund(base: str) -> str:
    """``run`` -> ``running``, ``dance`` -> ``dancing``, ``lie`` -> ``lying``, ``ski`` -> ``skiing``."""
    if base.endswith("ie"):
        return base[:-2] + "ying"
    if base in _DOUBLING:
        return base + base[-1] + "ing"
    if base.endswith("e") and not base.endswith(("ee", "ye", "oe")):
        return base[:-1] + "ing"
    return base + "ing"


def third_person(base: str) -> str:
    """``walk`` -> ``walks``, ``fly`` -> ``flies``, ``push`` -> ``pushes``."""
    if base.endswith(("s", "sh", "ch", "x", "z", "o")):
        return base + "es"
    if base.endswith("y") and base[-2:-1] not in "aeiou":
        return base[:-1] + "ies"
    return base + "s"


#: motion verbs (base forms) and their forms -> base
MOTION_VERBS: frozenset[str] = frozenset(_VERBS.split()) | _NEEDS_OBJECT
_GERUNDS: dict[str, str] = {gerund(v): v for v in MOTION_VERBS}
_THIRD: dict[str, str] = {third_person(v): v for v in MOTION_VERBS}

_TOKEN = re.compile(r"[a-z]+(?:['-][a-z]+)*|[0-9]+|[,.;:!?()/]")
_PUNCT = frozenset(",.;:!?()/")


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


# ----------------------------------------------------------------------------------------------
# shards
# ----------------------------------------------------------------------------------------------
@dataclass
class MotionCaptionReport:
    """Totals of one :func:`process_shards` run (written as ``report.json``)."""

    shards_read: int = 0
    shards_written: int = 0
    clips: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    categories: dict[str, int] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)
    data_faults: dict[str, int] = field(default_factory=dict)
    captioner: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"


def _caption_of(sample: dict[str, Any]) -> tuple[str, bool]:
    raw = sample.get("txt")
    if raw is None:
        return "", False
    if isinstance(raw, bytes):
        try:
            return raw.decode("utf-8"), True
        except UnicodeDecodeError:
            return raw.decode("utf-8", errors="replace"), False
    return str(raw), True


def _chunks(it: Iterable[Any], n: int) -> Iterator[list[Any]]:
    buf: list[Any] = []
    for x in it:
        buf.append(x)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf


def process_shards(
    shards: str | Sequence[str],
    out_dir: str | Path,
    captioner: RuleBasedMotionCaptioner | ModelMotionCaptioner | None = None,
    batch_size: int = 64,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> MotionCaptionReport:
    """Filter and re-caption a shard set into ``out_dir``.

    One output shard per input shard that keeps at least one clip (same file name); members other
    than ``.txt`` / ``.json`` are copied byte for byte. ``captions.csv`` lists every clip read
    (key, shard, kept, reason, category, caption, original caption, source, model output) and
    ``report.json`` the totals. Unreadable shards, cut shards and duplicate keys are counted
    (``data_faults``), never fatal. ``limit``: stop after this many clips.
    """
    import webdataset as wds
    from tqdm import tqdm

    from i2vlab.data.health import DataHealth
    from i2vlab.data.shards import list_shards
    from i2vlab.data.tarstream import shard_samples

    captioner = captioner or RuleBasedMotionCaptioner()
    urls = list_shards(shards, key="--shards")
    out = Path(out_dir)
    if out.exists() and any(out.glob("*.tar")) and not overwrite:
        raise OutputExistsError(f"--out {out} already holds shards; pick another --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.tar"):
        old.unlink()
    report = MotionCaptionReport(captioner=type(captioner).__name__)
    dropped, cats, sources = Counter(), Counter(), Counter()
    health = DataHealth()
    names = Counter(Path(u).name for u in urls)
    rows_f = open(out / "captions.csv", "w", newline="")
    rows = csv.writer(rows_f)
    rows.writerow(
        ["key", "shard", "kept", "reason", "category", "caption", "original", "source", "model_output"]
    )
    done = False
    try:
        for n, url in enumerate(tqdm(urls, desc="shards", unit="shard", disable=not progress)):
            report.shards_read += 1
            name = Path(url).name if names[Path(url).name] == 1 else f"{n:06d}-{Path(url).name}"
            if not name.endswith(".tar"):
                name += ".tar"
            tmp, final = out / f".{name}.tmp", out / name
            written = 0
            with wds.TarWriter(str(tmp)) as sink:
                for chunk in _chunks(shard_samples(url, health), batch_size):
                    if limit is not None:
                        chunk = chunk[: max(0, limit - report.clips)]
                    if not chunk:
                        done = True
                        break
                    caps = []
                    for s in chunk:
                        c, ok = _caption_of(s)
                        if not ok:
                            health.add("missing_caption" if s.get("txt") is None else "bad_caption")
                        caps.append(c)
                    decisions = captioner.batch(caps)
                    for s, cap, d in zip(chunk, caps, decisions):
                        report.clips += 1
                        rows.writerow(
                            [
                                s["__key__"],
                                Path(url).name,
                                int(d.keep),
                                d.reason,
                                d.category or "",
                                d.caption,
                                cap,
                                d.source,
                                d.model_output or "",
                            ]
                        )
                        if not d.keep:
                            dropped[d.reason] += 1
                            continue
                        meta = _meta_of(s)
                        meta.update(
                            motion_caption=d.caption,
                            motion_category=d.category,
                            original_caption=cap,
                            motion_source=d.source,
                        )
                        sample = {k: v for k, v in s.items() if k not in ("__url__", "txt", "json")}
                        sample["txt"] = d.caption
                        sample["json"] = json.dumps(meta, sort_keys=True)
                        sink.write(sample)
                        written += 1
                        report.kept += 1
                        cats[d.category or "none"] += 1
                        sources[d.source] += 1
                    if limit is not None and report.clips >= limit:
                        done = True
                        break
            if written:
                tmp.replace(final)
                report.shards_written += 1
            else:
                tmp.unlink()
            if done:
                break
    finally:
        rows_f.close()
    report.dropped, report.categories, report.sources = dict(dropped), dict(cats), dict(sources)
    report.data_faults = {k: v for k, v in health.snapshot().items() if v}
    (out / "report.json").write_text(report.to_json())
    return report


def _meta_of(sample: dict[str, Any]) -> dict[str, Any]:
    raw = sample.get("json")
    if raw is None:
        return {}
    try:
        meta = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except (ValueError, UnicodeDecodeError):
        return {"bad_meta": True}
    return meta if isinstance(meta, dict) else {"meta": meta}


# ----------------------------------------------------------------------------------------------
# motion-control evaluation cases
# ----------------------------------------------------------------------------------------------
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def read_motions(path: str | Path) -> list[str]:
    """Motion prompts, one a line (``#`` comments); ``{subject}`` stands for the image's subject."""
    lines = Path(path).read_text().splitlines()
    return [x.strip() for x in lines if x.strip() and not x.lstrip().startswith("#")]


def motion_control_cases(
    images: Sequence[str | Path],
    motions: Sequence[str],
    subjects: dict[str, str] | None = None,
    default_subject: str = "a person",
) -> list[dict[str, str]]:
    """Every image crossed with every motion prompt: rows ``key, image, prompt, motion``.

    ``subjects``: image stem -> subject words ("a man", "a woman"); ``{subject}`` in a motion is
    replaced by it (default ``default_subject``). Keys are ``<image stem>__<motion index>``."""
    subjects = subjects or {}
    rows = []
    for img in images:
        p = Path(img)
        subj = subjects.get(p.stem, default_subject)
        for j, m in enumerate(motions):
            prompt = m.replace("{subject}", subj).strip()
            prompt = prompt[0].upper() + prompt[1:] if prompt else prompt
            rows.append({"key": f"{p.stem}__{j:02d}", "image": str(p), "prompt": prompt, "motion": m})
    return rows


def write_cases(rows: Sequence[dict[str, str]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["key", "image", "prompt", "motion"])
        w.writeheader()
        w.writerows(rows)
    return path
