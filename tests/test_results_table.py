"""scripts/results_table.py: evaluations collected into the papers' tables (ours beside the published
numbers, non-comparable rows marked), on hand-made results and on toy ablation runs evaluated end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import results_table
import torch
from conftest import compose_train


def fake_eval(d: Path, protocol: str, values: dict, run: Path | None = None, comparable=True, notes=()):
    from conftest import CONF
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import i2vlab.evaluation.config  # noqa: F401

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        p = OmegaConf.to_container(
            compose("evaluate", overrides=[f"eval={protocol}"]).eval.protocol, resolve=True
        )
    d.mkdir(parents=True)
    res = {"name": protocol, "protocol": p, "comparable": comparable, "notes": list(notes),
           "metrics": {m: {"value": v} for m, v in values.items()},
           "config": {"generate": {"checkpoint": str(run) if run else None}}}  # fmt: skip
    (d / "results.json").write_text(json.dumps(res))
    return d


def fake_run(d: Path, row: str | None, table: str = "DynamiCrafter Table 3", task: str = "x") -> Path:
    (d / ".hydra").mkdir(parents=True)
    abl = f"ablation:\n  paper: DynamiCrafter\n  table: {table}\n  row: {row}\n" if row else ""
    (d / ".hydra" / "config.yaml").write_text(f"task_name: {task}\n{abl}")
    return d


def test_tables_put_ours_under_the_paper_rows_with_groups_sources_and_marks(tmp_path):
    full, woctx = fake_run(tmp_path / "full", "Ours"), fake_run(tmp_path / "woctx", "w/o ctx")
    plain = fake_run(tmp_path / "plain", None, task="my_run")
    evs = [
        fake_eval(tmp_path / "e1", "dynamicrafter_ablation", {"fvd": 400.0, "pic": 0.7}, full),
        fake_eval(tmp_path / "e2", "dynamicrafter_ablation", {"fvd": 500.0, "pic": 0.6}, woctx, comparable=False),
        fake_eval(tmp_path / "e3", "dynamicrafter_ucf101", {"fvd": 410.0, "kvd": 20.0, "pic": 0.71}, full),
        fake_eval(tmp_path / "e4", "dynamicrafter_msrvtt", {"fvd": 300.0, "kvd": 10.0, "pic": 0.72}, full,
                  notes=["N=100 generated videos scored; the protocol uses 2048"]),
        fake_eval(tmp_path / "e5", "inbetween_davis", {"fid": 30.0, "fvd": 420.0}, plain),
    ]  # fmt: skip
    out = tmp_path / "tables"
    tables = results_table.main([*map(str, evs), "--out", str(out)])
    t3 = results_table.lines_of(tables["DynamiCrafter Table 3"])
    names = [c[0] for _, c in t3]
    assert names[:3] == ["Ours", "Ours (i2vlab)", "w/o ctx"] and names[3] == "w/o ctx (i2vlab)"
    assert t3[0][1][2:4] == ["not found", "not found"] and t3[1][1][2:4] == ["400.00", "0.7000"]
    assert t3[3][0] == "ours noncomparable" and "random-init extractors" in t3[3][1][-1]
    t1 = tables["DynamiCrafter Table 1"]
    assert t1.groups == ["UCF-101", "MSR-VTT"]
    head = results_table.header_of(t1)
    assert head[2:8] == [
        "UCF-101 FVD↓",
        "UCF-101 KVD↓",
        "UCF-101 PIC↑",
        "MSR-VTT FVD↓",
        "MSR-VTT KVD↓",
        "MSR-VTT PIC↑",
    ]
    rows = results_table.lines_of(t1)
    assert [c[0] for _, c in rows] == ["VideoComposer", "I2VGen-XL", "DynamiCrafter", "Ours (i2vlab)"]
    assert rows[-1][1][2:8] == ["410.00", "20.0000", "0.7100", "300.00", "10.0000", "0.7200"]
    assert "the protocol uses 2048" in rows[-1][1][-1]  # one ours row per run, both datasets
    davis = results_table.lines_of(tables["Generative Inbetweening Table 1"])
    assert davis[0][1][:4] == ["FILM", "paper", "41.8500", "1048.65"]
    assert davis[-1][1][0] == "my_run (i2vlab)"  # no recipe row: the run's task_name, at the end
    md = (out / "tables.md").read_text()
    assert "## DynamiCrafter Table 3" in md and "not found: the Table 3 values were searched" in md
    lines = list(csv.DictReader(open(out / "tables.csv")))
    ours = [
        r
        for r in lines
        if r["source"] == "ours" and r["table"] == "DynamiCrafter Table 3" and r["metric"] == "fvd"
    ]
    assert {(r["row"], r["value"], r["comparable"]) for r in ours} == {
        ("Ours", "400.0", "True"),
        ("w/o ctx", "500.0", "False"),
    }


def test_all_published_lists_every_paper_table_and_bare_runs(tmp_path):
    run = fake_run(tmp_path / "r", "w/o VDG")
    tables = results_table.main([str(run), "--all-published", "--out", str(tmp_path / "t")])
    assert {"DynamiCrafter Table 1", "DynamiCrafter Table 3", "Generative Inbetweening Table 1",
            "I2V-Adapter Table 1", "I2V-Adapter Table 2", "I2V-Adapter Table 3"} <= set(tables)  # fmt: skip
    gi = tables["Generative Inbetweening Table 1"]
    assert gi.groups == ["DAVIS", "Pexels"] and gi.published["Ours"][("Pexels", "fvd")] == 306.84
    i2v = tables["I2V-Adapter Table 3"].published
    assert i2v["w/o Content-Adapter"][(None, "warping_error")] == 19.5557
    t3 = results_table.lines_of(tables["DynamiCrafter Table 3"])
    row = next(c for k, c in t3 if c[0] == "w/o VDG (i2vlab)")
    assert "not evaluated" in row[-1]


@pytest.mark.slow
def test_toy_ablation_runs_evaluated_then_tabulated_with_a_gallery(tmp_path, toy_data):
    from conftest import CONF
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from PIL import Image

    import i2vlab.evaluation.config  # noqa: F401
    from i2vlab.evaluation import Evaluator
    from i2vlab.training import train

    torch.set_num_threads(1)
    runs = {}
    for name in ("toy_full", "toy_wo_context"):
        run = tmp_path / name
        train(compose_train([f"experiment=ablation/dynamicrafter/{name}", "trainer.max_steps=2",
                             "trainer.val_check_interval=2", "data.num_workers=0",
                             "callbacks.model_checkpoint.every_n_train_steps=2", "method.validation.num_samples=0",
                             "method.validation.num_timesteps=1"], run, toy_data))  # fmt: skip
        runs[name] = run
    lines = ["key,prompt,image"]
    for i in range(4):
        g = torch.Generator().manual_seed(i)
        Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).byte().numpy()).save(
            tmp_path / f"i{i}.png"
        )
        lines.append(f"case{i},a shape moving {i},i{i}.png")
    (tmp_path / "cases.csv").write_text("\n".join(lines) + "\n")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):  # the documented toy protocol
        base = compose("evaluate", overrides=["eval=toy_dynamicrafter_ablation"]).eval
        base = OmegaConf.to_container(base, resolve=True)
    evals = []
    for name, run in runs.items():
        gen = {**base["generate"], "checkpoint": str(run), "prompts": str(tmp_path / "cases.csv")}
        cfg = {**base, "real": str(toy_data / "toy" / "val"), "cache_dir": None, "plots": False,
               "output_dir": str(tmp_path / f"eval_{name}"), "generate": gen}  # fmt: skip
        cfg["generate"]["kwargs"] = {"num_inference_steps": 2}
        Evaluator(cfg).run()
        evals.append(tmp_path / f"eval_{name}")
    out = tmp_path / "tables"
    tables = results_table.main([*map(str, evals), "--out", str(out), "--gallery"])
    rows = results_table.lines_of(tables["DynamiCrafter Table 3"])
    names = [c[0] for _, c in rows]
    assert names.index("Ours (i2vlab)") == names.index("Ours") + 1
    assert names.index("w/o ctx (i2vlab)") == names.index("w/o ctx") + 1
    ours = [c for k, c in rows if k.startswith("ours")]
    assert all(c[2] not in ("not run", "—") and float(c[2]) >= 0 for c in ours)  # FVD computed
    assert all("random-init extractors" in c[-1] and "the protocol uses 2048" in c[-1] for c in ours)
    assert (out / "tables.md").is_file() and (out / "tables.csv").is_file()
    page = (out / "gallery.html").read_text()
    assert page.count("<video") == 8 and "w/o ctx" in page  # 4 cases x 2 runs side by side
