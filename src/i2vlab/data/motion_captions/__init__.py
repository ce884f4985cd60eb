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

from i2vlab.data.motion_captions.model import (  # noqa: F401
    FEW_SHOT,
    PROMPT_HEADER,
    ModelMotionCaptioner,
    TransformersMotionRewriter,
    build_prompt,
    parse_answer,
)
from i2vlab.data.motion_captions.rules import (  # noqa: F401
    MotionCaption,
    RuleBasedMotionCaptioner,
    normalise,
    tokens,
)
from i2vlab.data.motion_captions.shards import (  # noqa: F401
    IMAGE_SUFFIXES,
    MotionCaptionReport,
    OutputExistsError,
    motion_control_cases,
    process_shards,
    read_motions,
    write_cases,
)
from i2vlab.data.motion_captions.vocab import (  # noqa: F401
    CATEGORIES,
    COLLECTIVES,
    MOTION_VERBS,
    SUBJECTS,
    gerund,
    third_person,
)
