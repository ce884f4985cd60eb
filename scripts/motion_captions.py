#!/usr/bin/env python
"""Motion-caption data for DynamiCrafter's text-based motion control (paper §5, "DCP").

Filter a shard set to the clips whose captions describe motion and rewrite each caption motion
first ("Young woman doing push-ups on the beach at sunset" -> "woman doing push-ups", category
human), writing new shards; then train on them (``data=webvid data.train_shards=<out>``).

    # rule-based filter and rewrite (default; no model, deterministic)
    python scripts/motion_captions.py filter --shards '/data/webvid/shards/{000000..000999}.tar' \\
        --out /data/webvid_dcp
    # rewrite with a local text model (a folder, or a hub id with network access); the rules still
    # filter unless --filter model; answers that fail the check fall back to the rules (counted)
    python scripts/motion_captions.py filter --shards data/toy/train --out data/toy_dcp \\
        --rewriter model --model /models/flan-t5-large --batch-size 16 --device cuda
    # what the rules make of one caption
    python scripts/motion_captions.py show "Happy dog running across a green meadow, 4k"
    # the motion-control evaluation cases: every image x every motion prompt
    python scripts/motion_captions.py cases --images /data/motion_control/images --out cases.csv

``filter`` options: ``--categories human,animal`` (keep only these; ``none`` = no recognised
subject), ``--style motion|motion_first`` (the phrase alone, the paper's "purer dynamics wording";
or the phrase then the original caption), ``--max-object-words``, ``--limit``, ``--overwrite``.
Outputs in ``--out``: one shard per input shard that keeps a clip (mp4 copied byte for byte,
``.txt`` = motion caption, ``.json`` + ``motion_caption``, ``motion_category``, ``original_caption``,
``motion_source``), ``captions.csv`` (every clip read and its decision) and ``report.json``
(totals, drop reasons, categories, model fallbacks, data faults). Library:
``i2vlab.data.motion_captions``; protocol: ``docs/reproduce.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from i2vlab.utils.runtime import configure_threads

configure_threads()

from i2vlab.data.motion_captions import (  # noqa: E402
    CATEGORIES,
    IMAGE_SUFFIXES,
    ModelMotionCaptioner,
    RuleBasedMotionCaptioner,
    TransformersMotionRewriter,
    motion_control_cases,
    process_shards,
    read_motions,
    write_cases,
)
from i2vlab.errors import report_user_errors  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MOTIONS = ROOT / "conf" / "eval" / "motion_control" / "motions.txt"


def _categories(text: str | None) -> list[str | None] | None:
    if not text:
        return None
    out: list[str | None] = []
    for c in text.split(","):
        c = c.strip().lower()
        if c == "none":
            out.append(None)
        elif c in CATEGORIES:
            out.append(c)
        else:
            raise SystemExit(
                f"error: --categories: unknown category {c!r}; known: {', '.join(CATEGORIES)}, none"
            )
    return out


def build_captioner(args: argparse.Namespace):
    rules = RuleBasedMotionCaptioner(
        categories=_categories(args.categories), style=args.style, max_object_words=args.max_object_words
    )
    if args.rewriter == "rules":
        if args.filter == "model":
            raise SystemExit("error: --filter model needs --rewriter model")
        return rules
    if not args.model:
        raise SystemExit("error: --rewriter model needs --model <local folder or hub id>")
    gen = TransformersMotionRewriter(
        args.model,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
    )
    return ModelMotionCaptioner(gen, rules=rules, filter=args.filter, max_words=args.max_words)


def cmd_filter(args: argparse.Namespace) -> int:
    captioner = build_captioner(args)
    rep = process_shards(
        args.shards,
        args.out,
        captioner,
        batch_size=args.batch_size,
        limit=args.limit,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    frac = rep.kept / rep.clips if rep.clips else 0.0
    print(
        f"{rep.clips} clips in {rep.shards_read} shards -> kept {rep.kept} ({frac:.1%}) in "
        f"{rep.shards_written} shards at {args.out}"
    )
    print(f"  dropped: {json.dumps(rep.dropped, sort_keys=True)}")
    print(f"  categories: {json.dumps(rep.categories, sort_keys=True)}")
    print(f"  caption source: {json.dumps(rep.sources, sort_keys=True)}")
    if rep.data_faults:
        print(f"  data faults (skipped or repaired): {json.dumps(rep.data_faults, sort_keys=True)}")
    print(f"  per clip: {Path(args.out) / 'captions.csv'}; totals: {Path(args.out) / 'report.json'}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    captioner = build_captioner(args)
    for d in captioner.batch(args.captions):
        print(json.dumps({k: v for k, v in vars(d).items() if v is not None}, ensure_ascii=False))
    return 0


def cmd_cases(args: argparse.Namespace) -> int:
    folder = Path(args.images)
    if not folder.is_dir():
        raise SystemExit(f"error: --images {folder} is not a folder")
    images = sorted(p.resolve() for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise SystemExit(f"error: --images {folder}: no {'/'.join(IMAGE_SUFFIXES)} files")
    subjects = {}
    if args.subjects:
        with open(args.subjects, newline="") as f:
            subjects = {r["image"]: r["subject"] for r in csv.DictReader(f)}
    rows = motion_control_cases(images, read_motions(args.motions), subjects, args.subject)
    write_cases(rows, args.out)
    print(f"{len(rows)} cases ({len(images)} images x {len(rows) // len(images)} motions) -> {args.out}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def captioner_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--rewriter", choices=["rules", "model"], default="rules")
        q.add_argument("--model", help="text model for --rewriter model: a local folder or a hub id")
        q.add_argument(
            "--filter",
            choices=["rules", "model"],
            default="rules",
            help="who decides that a caption describes motion (model: the model's 'none' drops)",
        )
        q.add_argument(
            "--categories", help=f"keep only these (comma-separated: {', '.join(CATEGORIES)}, none)"
        )
        q.add_argument("--style", choices=["motion", "motion_first"], default="motion")
        q.add_argument("--max-object-words", type=int, default=3)
        q.add_argument("--max-words", type=int, default=10, help="longest model answer accepted")
        q.add_argument("--max-new-tokens", type=int, default=24)
        q.add_argument("--batch-size", type=int, default=16)
        q.add_argument("--device", default="cpu")
        q.add_argument("--dtype", default=None, help="model dtype, e.g. bfloat16 (default: the model's)")

    f = sub.add_parser("filter", help="filter and re-caption shards")
    f.add_argument("--shards", required=True, nargs="+", help="folder, tar, brace pattern, glob or list file")
    f.add_argument("--out", required=True)
    f.add_argument("--limit", type=int, default=None, help="stop after this many clips")
    f.add_argument("--overwrite", action="store_true", help="replace the shards already in --out")
    f.add_argument("--quiet", action="store_true")
    captioner_args(f)
    f.set_defaults(fn=cmd_filter)

    s = sub.add_parser("show", help="print the decision for captions given on the command line")
    s.add_argument("captions", nargs="+")
    captioner_args(s)
    s.set_defaults(fn=cmd_show)

    c = sub.add_parser("cases", help="write the motion-control evaluation cases (image x motion prompt)")
    c.add_argument("--images", required=True, help="folder of condition images (human figures)")
    c.add_argument("--out", required=True, help="cases .csv (key, image, prompt, motion)")
    c.add_argument("--motions", default=str(DEFAULT_MOTIONS), help="motion prompts, one a line ({subject})")
    c.add_argument("--subject", default="a person", help="{subject} for images not in --subjects")
    c.add_argument("--subjects", help="csv with columns image (file stem), subject ('a man')")
    c.set_defaults(fn=cmd_cases)
    return p


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "shards", None) is not None and len(args.shards) == 1:
        args.shards = args.shards[0]
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
