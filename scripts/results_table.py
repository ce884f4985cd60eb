#!/usr/bin/env python
"""Collect evaluations into the papers' tables: ours beside the published numbers.

    python scripts/results_table.py RUN_OR_EVAL_DIR... [--out DIR] [--all-published] [--gallery]

Each argument is an evaluation directory (``results.json``), a training run (its evaluations are the
``results.json`` files below it; a run with none is listed as not evaluated) or any folder holding
them. For every ``results.json``:

- the **table** is its protocol's ``protocol.table`` (e.g. ``DynamiCrafter Table 1``; else the
  protocol's title), the **column group** ``protocol.group`` (the dataset: UCF-101 | MSR-VTT, Pexels |
  DAVIS), the columns ``protocol.columns``; the paper's rows are ``protocol.published.rows`` with
  their source (``conf/eval/<protocol>.yaml``: values from the papers, "not found" where they were not
  found, never guessed);
- **our row** is named after the training run that generated the videos
  (``eval.generate.checkpoint``): its recipe's ``ablation.row`` (``conf/experiment/ablation/...``),
  placed right under the published row of the same name (``ablation.table`` equal to the protocol's
  table; otherwise under ``protocol.published.ours_row``); without a recipe row, the run's
  ``task_name`` or the evaluation's folder name;
- a row is marked **not comparable** when the evaluation used random-init extractors, scored another
  number of samples than the protocol, is a stand-in (``ablation.comparable: false``, e.g. optical flow
  for FILM), or comes from another base model (the protocol's note says which).

Writes ``<out>/tables.md`` (one Markdown table per paper table) and ``<out>/tables.csv`` (one line
per row, group and metric: table, group, row, source, metric, value, comparable, why, run, eval_dir);
``--all-published`` adds every protocol of ``conf/eval`` with published rows, evaluated or not;
``--gallery`` writes ``<out>/gallery.html``: per sample key, every evaluation's video side by side.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Ours:
    """One of our rows: a run (or an evaluation without a known run) in one table."""

    label: str
    match: str | None  # the published row it sits under
    ref: str  # the paper's table / row it reproduces
    values: dict[tuple[str | None, str], Any] = field(default_factory=dict)  # (group, metric) -> value
    why: list[str] = field(default_factory=list)
    run: str = ""
    evals: list[str] = field(default_factory=list)


@dataclass
class Table:
    name: str
    paper: str = ""
    groups: list[str | None] = field(default_factory=list)
    columns: dict[str | None, list[tuple[str, str]]] = field(
        default_factory=dict
    )  # group -> [(metric, label)]
    published: dict[str, dict[tuple[str | None, str], Any]] = field(default_factory=dict)
    missing: dict[str | None, str] = field(default_factory=dict)
    sources: dict[str | None, str] = field(default_factory=dict)
    notes: dict[str | None, str] = field(default_factory=dict)
    ours_row: str | None = None
    ours: list[Ours] = field(default_factory=list)


def find_results(paths: list[str]) -> tuple[list[Path], list[Path]]:
    """(results.json files, training runs without any) under the given paths."""
    found, bare = [], []
    for a in paths:
        p = Path(a)
        if not p.exists():
            raise SystemExit(f"results_table: {p} does not exist")
        if p.is_file() and p.name == "results.json":
            found.append(p)
            continue
        hits = sorted(p.rglob("results.json"))
        if hits:
            found += hits
        elif (p / ".hydra" / "config.yaml").is_file() or (p / "export" / "config.yaml").is_file():
            bare.append(p)
        else:
            raise SystemExit(f"results_table: no results.json under {p} and it is not a training run")
    return sorted(set(found)), bare


def run_config(run: Path) -> Any:
    from omegaconf import OmegaConf

    import i2vlab.utils.config  # noqa: F401  (resolvers of saved configs)

    for c in (run / ".hydra" / "config.yaml", run / "export" / "config.yaml", run / "config.yaml"):
        if c.is_file():
            return OmegaConf.load(c)
    return None


def _select(cfg: Any, key: str) -> Any:
    from omegaconf import OmegaConf

    if cfg is None:
        return None
    try:
        v = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
    except Exception:  # noqa: BLE001 - a saved config may refer to a runtime that is gone
        return None
    return OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v


def run_of(results: dict) -> Path | None:
    ck = ((results.get("config") or {}).get("generate") or {}).get("checkpoint")
    if not ck:
        return None
    p = Path(ck)
    if p.is_file():
        p = p.parent.parent if p.parent.name in ("checkpoints", "export") else p.parent
    return p if p.exists() else None


def describe_run(run: Path | None, fallback: str) -> dict:
    cfg = run_config(run) if run is not None else None
    abl = _select(cfg, "ablation") or {}
    return {
        "label": abl.get("label") or abl.get("row") or _select(cfg, "task_name") or fallback,
        "row": abl.get("row"),
        "table": abl.get("table"),
        "comparable": abl.get("comparable", True),
        "why": abl.get("why"),
        "run": str(run) if run is not None else "",
    }


def table_for(tables: dict[str, Table], protocol: dict, fallback: str) -> tuple[Table, str | None]:
    name = protocol.get("table") or protocol.get("title") or fallback
    t = tables.setdefault(name, Table(name))
    group = protocol.get("group")
    if group not in t.groups:
        t.groups.append(group)
        cols = protocol.get("columns") or []
        t.columns[group] = [(c["metric"], c.get("label") or c["metric"]) for c in cols]
    pub = protocol.get("published") or {}
    t.paper = t.paper or protocol.get("paper") or ""
    t.ours_row = t.ours_row or pub.get("ours_row")
    if pub.get("source"):
        t.sources[group] = " ".join(str(pub["source"]).split())
    if pub.get("note"):
        t.notes[group] = " ".join(str(pub["note"]).split())
    t.missing[group] = pub.get("missing") or "—"
    for row, vals in (pub.get("rows") or {}).items():
        d = t.published.setdefault(str(row), {})
        for m, _ in t.columns[group]:
            d[(group, m)] = (vals or {}).get(m)
    return t, group


def noncomparable_reasons(results: dict, info: dict) -> list[str]:
    why = []
    if not results.get("comparable", True):
        why.append("random-init extractors")
    for n in results.get("notes") or []:
        if "the protocol uses" in n or "differs from the paper" in n or "synthetic" in n:
            why.append(n)
    if info.get("comparable") is False:
        why.append(info.get("why") or "not the paper's method")
    return why


def collect(paths: list[str], all_published: bool = False) -> dict[str, Table]:
    files, bare = find_results(paths)
    tables: dict[str, Table] = {}
    if all_published:
        load_all_protocols(tables)
    for f in files:
        res = json.loads(f.read_text())
        protocol = res.get("protocol") or {}
        t, group = table_for(tables, protocol, res.get("name", f.parent.name))
        run = run_of(res)
        info = describe_run(run, f.parent.name)
        match = info["row"] if info["table"] == t.name and info["row"] in t.published else None
        if match is None and info["row"] in ("Ours", None) and t.ours_row in t.published:
            match = t.ours_row if run is not None else None
        key = (info["label"], info["run"] or str(f.parent))
        row = next((o for o in t.ours if (o.label, o.run or o.evals[0]) == key), None)
        if row is None:
            ref = f"{info['table']}, row {info['row']}" if info["table"] and info["row"] else "—"
            row = Ours(info["label"], match, ref, run=info["run"])
            t.ours.append(row)
        row.evals.append(str(f.parent))
        for m, _ in t.columns[group]:
            row.values[(group, m)] = ((res.get("metrics") or {}).get(m) or {}).get("value")
        for w in noncomparable_reasons(res, info):
            if w not in row.why:
                row.why.append(w)
    for run in bare:
        info = describe_run(run, run.name)
        name = info["table"] or "not evaluated"
        t = tables.setdefault(name, Table(name))
        if not t.groups:
            t.groups.append(None)
            t.columns[None] = []
        o = Ours(info["label"], info["row"] if info["row"] in t.published else None,
                 f"{info['table']}, row {info['row']}" if info["row"] else "—", run=info["run"])  # fmt: skip
        o.why.append("not evaluated (no results.json under the run)")
        t.ours.append(o)
    return tables


def load_all_protocols(tables: dict[str, Table]) -> None:
    """Every ``conf/eval`` protocol with published rows (composed, so inherited keys count)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import i2vlab.evaluation.config  # noqa: F401  (the eval/schema structured config)

    names = sorted(p.stem for p in (ROOT / "conf" / "eval").glob("*.yaml") if p.stem not in ("base", "smoke"))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for n in names:
            protocol = OmegaConf.to_container(
                compose("evaluate", overrides=[f"eval={n}"]).eval.protocol, resolve=True
            )
            if (protocol.get("published") or {}).get("rows") or (protocol.get("published") or {}).get(
                "source"
            ):
                table_for(tables, protocol, n)


# ----------------------------------------------------------------------------------------------
def fmt(v: Any, missing: str = "—") -> str:
    if v is None:
        return missing
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:.2f}"
    return str(v)


def header_of(t: Table) -> list[str]:
    cols = []
    for g in t.groups:
        cols += [f"{g} {label}" if g else label for _, label in t.columns[g]]
    return ["Method", "source"] + cols + ["paper row / notes"]


def lines_of(t: Table) -> list[tuple[str, list[str]]]:
    """(kind, cells): the paper's rows, each followed by the rows of ours that reproduce it, then the
    rest of ours. ``kind``: published | ours | ours noncomparable."""
    out = []

    def ours_line(o: Ours) -> tuple[str, list[str]]:
        cells = [fmt(o.values.get((g, m)), "not run") for g in t.groups for m, _ in t.columns[g]]
        note = o.ref + ("; NOT COMPARABLE: " + "; ".join(o.why) if o.why else "")
        kind = "ours noncomparable" if o.why else "ours"
        return kind, [f"{o.label} (i2vlab)", "ours" + (" ⚠" if o.why else "")] + cells + [note]

    placed = set()
    for name, vals in t.published.items():
        cells = [fmt(vals.get((g, m)), t.missing.get(g, "—")) for g in t.groups for m, _ in t.columns[g]]
        out.append(("published", [name, "paper"] + cells + [""]))
        for o in t.ours:
            if o.match == name:
                out.append(ours_line(o))
                placed.add(id(o))
    out += [ours_line(o) for o in t.ours if id(o) not in placed]
    return out


def render_markdown(tables: dict[str, Table]) -> str:
    md = ["# Results against the papers", "",
          "Generated by `scripts/results_table.py`. ⚠ marks rows that are not comparable to the paper "
          "(reasons in the last column). Published values come from `conf/eval/<protocol>.yaml`, "
          "with their sources below each table; \"not found\" means the number was searched for and "
          "not found, never guessed.", ""]  # fmt: skip
    for t in tables.values():
        head = header_of(t)
        md += [f"## {t.name}", ""]
        if t.paper:
            md += [f"Paper: {t.paper}", ""]
        md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for _, cells in lines_of(t):
            md.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        md.append("")
        for g in t.groups:
            tag = f"{g}: " if g else ""
            if t.sources.get(g):
                md.append(f"- {tag}published numbers: {t.sources[g]}")
            if t.notes.get(g):
                md.append(f"- {tag}note: {t.notes[g]}")
        for o in t.ours:
            if o.evals:
                md.append(
                    f"- {o.label}: run `{o.run or '—'}`, evaluations {', '.join(f'`{e}`' for e in o.evals)}"
                )
        md.append("")
    return "\n".join(md)


def write_csv(tables: dict[str, Table], path: Path) -> None:
    fields = ["table", "group", "row", "source", "metric", "value", "comparable", "why", "run", "eval_dir"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for t in tables.values():
            for name, vals in t.published.items():
                for (g, m), v in vals.items():
                    w.writerow({"table": t.name, "group": g or "", "row": name, "source": "paper", "metric": m,
                                "value": "" if v is None else v, "comparable": "", "why": t.sources.get(g, ""),
                                "run": "", "eval_dir": ""})  # fmt: skip
            for o in t.ours:
                for g in t.groups:
                    for m, _ in t.columns[g]:
                        v = o.values.get((g, m))
                        w.writerow({"table": t.name, "group": g or "", "row": o.label, "source": "ours",
                                    "metric": m, "value": "" if v is None else v, "comparable": not o.why,
                                    "why": "; ".join(o.why), "run": o.run, "eval_dir": ";".join(o.evals)})  # fmt: skip


def write_gallery(paths: list[str], out: Path, max_samples: int = 16) -> Path:
    """Every evaluation's videos side by side, per sample key (the first evaluation's inputs)."""
    from i2vlab.evaluation.html import GallerySample, GalleryVideo
    from i2vlab.evaluation.html import write_gallery as write_page

    files, _ = find_results(paths)
    per_key: dict[str, GallerySample] = {}
    for f in files:
        res = json.loads(f.read_text())
        label = describe_run(run_of(res), f.parent.name)["label"]
        manifest = None
        for cand in (f.parent / "generated" / "manifest.csv",):
            if cand.is_file():
                manifest = cand
        rows = (
            list(csv.DictReader(open(f.parent / "per_video.csv")))
            if (f.parent / "per_video.csv").is_file()
            else []
        )
        metrics = {r["key"]: {m: r.get(m) for m in res.get("metrics", {}) if r.get(m)} for r in rows
                   if r.get("role") == "generated" and r.get("status") == "ok"}  # fmt: skip
        if manifest is None:
            continue
        for r in csv.DictReader(open(manifest)):
            if r["key"] not in metrics:
                continue
            s = per_key.setdefault(r["key"], GallerySample(r["key"], r.get("prompt") or None,
                                                            [r["image"]] if r.get("image") else []))  # fmt: skip
            s.videos.append(GalleryVideo(label, r["generated"], metrics[r["key"]]))
    samples = [per_key[k] for k in sorted(per_key)][:max_samples]
    return write_page(out / "gallery.html", "Results gallery", [], samples, media_dir="gallery_media")


def main(argv: list[str] | None = None) -> dict[str, Table]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="evaluation dirs, training runs, or folders holding them")
    ap.add_argument("--out", default="outputs/tables", help="output folder (tables.md, tables.csv)")
    ap.add_argument("--all-published", action="store_true", help="also every conf/eval protocol's paper rows")
    ap.add_argument("--gallery", action="store_true", help="also gallery.html: the runs' videos side by side")
    a = ap.parse_args(argv)
    tables = collect(a.paths, a.all_published)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tables.md").write_text(render_markdown(tables))
    write_csv(tables, out / "tables.csv")
    if a.gallery:
        write_gallery(a.paths, out)
    print(render_markdown(tables))
    print(
        f"wrote {out / 'tables.md'} and {out / 'tables.csv'}"
        + (f" and {out / 'gallery.html'}" if a.gallery else "")
    )
    return tables


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
