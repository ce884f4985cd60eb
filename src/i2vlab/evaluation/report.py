"""Result files: results.json, results.md (laid out like the paper's table), per_video.csv, plots and
report.html (the results gallery, :mod:`.html`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from .registry import LABELS, METRICS

PLOT_TITLES = {
    "per_frame_consistency.png": "per-frame similarity (mean over videos)",
    "flow_over_time.png": "flow magnitude / warping error per frame pair",
    "paired_per_frame.png": "paired metrics per frame",
}


def _fmt(v, digits=4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if v != 0 and abs(v) < 10**-digits:
            return f"{v:.2e}"
        return f"{v:.{digits}f}" if abs(v) < 1e4 else f"{v:.1f}"
    return str(v)


def _jsonable(x):
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def summary_lines(results: dict) -> list[tuple[int, str]]:
    """(log level, line) per metric for the console: its value, or why it was not computed."""
    import logging

    out = []
    for m, v in results["metrics"].items():
        if v.get("value") is None:
            out.append((logging.WARNING, f"{m:<18} not computed: {v.get('error', 'no value')}"))
        else:
            out.append((logging.INFO, f"{m:<18} {v['value']:.6g}"))
    return out


def results_rows(results: dict) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The results table: header and (kind, cells) rows -- the paper's published rows (``published``)
    then ours (``ours``, ``ours noncomparable`` with random-init extractors)."""
    p = results.get("protocol") or {}
    cols = p.get("columns") or [{"metric": m} for m in results["metrics"]]
    header = ["Method"] + [c.get("label") or LABELS.get(c["metric"], c["metric"]) for c in cols]
    rows = []
    for row_name, vals in ((p.get("published") or {}).get("rows") or {}).items():
        rows.append(("published", [row_name] + [_fmt((vals or {}).get(c["metric"])) for c in cols]))
    ours = []
    for c in cols:
        v = results["metrics"].get(c["metric"], {})
        ours.append("not computed" if v.get("value") is None else _fmt(v["value"]))
    tag = "i2vlab (ours)" + ("" if results["comparable"] else " [not comparable]")
    rows.append(("ours" if results["comparable"] else "ours noncomparable", [tag] + ours))
    return header, rows


def render_markdown(results: dict) -> str:
    p = results.get("protocol") or {}
    lines = [f"# Evaluation: {results['name']}", ""]
    if p.get("paper"):
        lines += [f"Protocol: **{p.get('title', results['name'])}** — {p['paper']}", ""]
    if not results["comparable"]:
        lines += [
            "> **NOT COMPARABLE** to published numbers: random-init extractor weights were used "
            "(allow_random_weights=true). Use these numbers only as a smoke test.",
            "",
        ]
    header, rows = results_rows(results)
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for kind, cells in rows:
        name = f"**{cells[0]}**" if kind.startswith("ours") else cells[0]
        lines.append("| " + " | ".join([name] + cells[1:]) + " |")
    lines.append("")
    pub = p.get("published") or {}
    if pub.get("source"):
        lines += [f"Published numbers: {pub['source']}", ""]
    if pub.get("note"):
        lines += [f"Note: {pub['note']}", ""]
    if results["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    n = results["n"]
    lines += [
        "## Samples",
        "",
        f"- generated scored: {n['generated_scored']} of {n['generated_listed']}",
        f"- real scored: {n['real_scored']} of {n['real_listed']}",
        f"- skipped: {json.dumps(n['skipped'])}",
        f"- scored, but some metrics not computed for them: {json.dumps(n.get('partially_scored', {}))}",
        "",
    ]
    cl = results["clip"]
    lines += [
        "## Clip protocol",
        "",
        f"- frames: {cl['num_frames']}, generated stride {cl['frame_stride']}, "
        f"real stride {cl['real_frame_stride']}, start {cl['start_frame']}",
        f"- resolution: {cl['resolution']} ({cl['resize']}), values {cl['value_range']}",
        f"- condition images: {results.get('condition_image_sources')}",
        "",
    ]
    lines += ["## Metric details", "", "| metric | value | details |", "|---|---|---|"]
    for m, v in results["metrics"].items():
        det = {k: x for k, x in v.items() if k != "value"}
        lines.append(f"| {m} | {_fmt(v.get('value'))} | {json.dumps(det)} |")
    lines += [
        "",
        "## Extractors",
        "",
        "| name | weights | sha256[:16] | comparable | settings |",
        "|---|---|---|---|---|",
    ]
    for k, e in results["extractors"].items():
        rest = {a: b for a, b in e.items() if a not in ("name", "weights", "weights_hash", "comparable")}
        lines.append(
            f"| {k} | {e['weights']} | {e['weights_hash']} | {e['comparable']} | {json.dumps(rest)} |"
        )
    lines += [
        "",
        f"git revision: `{results.get('git_revision')}`, world size {results.get('world_size')}",
        "",
    ]
    return "\n".join(lines)


def write_plots(curves: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    groups: dict[str, list[str]] = {}
    for name, spec in METRICS.items():
        if spec.plot:
            groups.setdefault(spec.plot, []).append(name)
    for fname, metrics in groups.items():
        present = [m for m in metrics if m in curves and curves[m][1] > 0]
        if not present:
            continue
        fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.2), squeeze=False)
        for ax, m in zip(axes[0], present):
            s, n = curves[m]
            y = (torch.as_tensor(s) / n).tolist()
            x0 = METRICS[m].curve_x0
            ax.plot(range(x0, x0 + len(y)), y, marker="o", ms=3)
            ax.set_title(LABELS.get(m, m))
            ax.set_xlabel("frame" if x0 == 0 else "frame pair (t-1, t)")
            ax.grid(alpha=0.3)
        fig.suptitle(PLOT_TITLES.get(fname, fname))
        fig.tight_layout()
        path = out_dir / fname
        fig.savefig(path, dpi=100)
        plt.close(fig)
        files.append(path.name)
    return files


def training_run_of(cfg: dict) -> Path | None:
    """The training run a report shows curves of: ``report.run``, else the run generation loaded."""
    from i2vlab.pipelines.loading import run_dir_of

    path = (cfg.get("report") or {}).get("run") or (cfg.get("generate") or {}).get("checkpoint")
    if not path or not Path(path).exists():
        return None
    run = run_dir_of(path)
    return run if (run / ".hydra").is_dir() or any(run.glob("csv/*/metrics.csv")) else None


def write_html(results: dict, rows: list[dict], items: list, out_dir: Path) -> Path:
    """``report.html`` (see :mod:`.html`): the results table, per-sample inputs and videos with their
    metrics, the training run's curves and lambda plot."""
    from .html import report_samples, run_figures, write_gallery

    cfg = results.get("config") or {}
    rep = cfg.get("report") or {}
    p = results.get("protocol") or {}
    header, table = results_rows(results)
    pub = p.get("published") or {}
    foot = " ".join(x for x in (f"Published numbers: {pub['source']}" if pub.get("source") else "",
                                f"Note: {pub['note']}" if pub.get("note") else "") if x)  # fmt: skip
    samples = report_samples(items, rows, list(results["metrics"]), int(rep.get("max_samples", 16)))
    run = training_run_of(cfg)
    figures = run_figures(run, out_dir / "report_media" / "run") if run is not None else []
    banner = None
    if not results["comparable"]:
        banner = ("NOT COMPARABLE to published numbers: random-init extractor weights were used "
                  "(allow_random_weights=true).")  # fmt: skip
    title = f"Evaluation: {results['name']}" + (f" ({p['title']})" if p.get("title") else "")
    return write_gallery(
        out_dir / "report.html", title, [(p.get("paper") or "results", header, table, foot)], samples,
        figures, banner, results.get("notes") or [],
    )  # fmt: skip


def write_outputs(
    results: dict,
    rows: list[dict],
    curves: dict,
    out_dir: Path,
    plots: bool = True,
    items: list | None = None,
) -> None:
    """results.json, results.md, per_video.csv, plots and, with ``items`` (the scored inputs) and
    ``eval.report.html`` on, report.html."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results["curves"] = {m: (torch.as_tensor(s) / max(n, 1)).tolist() for m, (s, n) in curves.items()}
    results["plots"] = write_plots(curves, out_dir) if plots else []
    (out_dir / "results.json").write_text(json.dumps(_jsonable(results), indent=2, default=str))
    (out_dir / "results.md").write_text(render_markdown(results))
    fields = ["key", "role", "status"]
    for r in rows:
        fields += [k for k in r if k not in fields]
    with open(out_dir / "per_video.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in sorted(rows, key=lambda r: (r["role"], r["key"])):
            w.writerow(r)
    if items is not None and ((results.get("config") or {}).get("report") or {}).get("html", True):
        write_html(results, rows, items, out_dir)
