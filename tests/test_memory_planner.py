"""The will-it-fit planner (:mod:`i2vlab.training.memory`) against real runs on the tiny configs.

The reference is a real Lightning ``fit`` of the tiny model (real tensors, the toy data loader,
gradient clipping, AdamW, two optimizer steps) with every tensor allocation followed by the same
tracker; the planner builds the same configuration on the meta device, runs its step on fake tensors
and must land within 10 % of the real peak (it is exact to a few bytes in practice). A GPU, where
present, compares the CUDA-emulating estimate with ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from conftest import compose_train

from i2vlab.training import instantiate_model, memory

TINY = [
    "data.num_workers=0",
    "data.batch_size=2",
    "trainer.max_steps=2",
    "trainer.limit_val_batches=0",
    "method.validation.num_samples=0",
]


def real_fit_peak(cfg) -> dict[str, int]:
    """Peak tensor memory (bytes per category) of a real 2-step Lightning fit of ``cfg`` on the CPU."""
    import hydra

    pl.seed_everything(0, workers=True, verbose=False)
    model = instantiate_model(cfg)
    dm = hydra.utils.instantiate(cfg.data, _convert_="partial")
    trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=[],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    tracker = memory.StepMemoryTracker()
    tracker.track_external(model)
    with tracker:
        trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2
    return tracker.peak()


@pytest.mark.parametrize(
    "overrides",
    [
        ["experiment=smoke"],
        ["experiment=smoke", "trainer.precision=bf16-mixed", "method.frozen_dtype=bf16"],
        ["experiment=toy_dynamicrafter_stage3", "data.batch_size=1"],
    ],
    ids=["animatediff-fp32", "animatediff-bf16", "dynamicrafter"],
)
def test_planner_matches_a_real_lightning_run_within_10_percent(overrides, tmp_path, toy_data):
    cfg = compose_train([*TINY, *overrides], tmp_path, toy_data)
    real = real_fit_peak(cfg)
    # the planner: meta-device build, fake tensors, CPU semantics (as the real run above)
    est = memory.estimate(cfg, emulate_cuda=False)
    assert est.setting["batch_size"] == cfg.data.batch_size
    rel = est.peak / real["total"] - 1
    print(f"planner {est.peak} B, real run {real['total']} B ({rel:+.4%})")
    assert abs(rel) < 0.10, f"planner {est.peak} B vs real {real['total']} B ({rel:+.2%})"


def test_planner_categories_and_what_fits(tmp_path):
    cfg = compose_train(["experiment=smoke", "data.num_frames=4"], tmp_path)
    fits, runs = memory.largest_batch(cfg, [1e-6], reserve_gb=0.0)
    assert fits == {1e-6: 0}
    b1, b2 = runs
    assert (b1.batch_size, b2.batch_size) == (1, 2) and b2.peak > b1.peak  # activations grow with the batch
    cfg_model = instantiate_model(cfg)
    cfg_model.configure_trainable()
    n_params = sum(p.numel() for p in cfg_model.parameters())
    trainable = sum(p.numel() for p in cfg_model.trainable_parameters())
    assert b1.weights >= 4 * n_params  # fp32 weights (rounded up to 512-byte blocks)
    assert b1.optimizer >= 2 * 4 * trainable  # AdamW: two fp32 moments per trainable weight
    assert b1.at_peak["act"] > 0 and b1.peak == sum(v for k, v in b1.at_peak.items() if k != "total")
    # sharding only ever removes per-GPU memory; DDP adds its gradient buckets
    assert memory.shard(b1, "zero3", 8) <= memory.shard(b1, "zero2", 8) <= b1.peak
    assert memory.shard(b1, "ddp", 2) == b1.peak + b1.trainable_weights


def test_batch_search_returns_the_largest_measured_fit():
    calls = []

    def peak(b):  # not quite linear: the straight line through b=1,2 overshoots
        calls.append(b)
        return 100 + 10 * b + b * b

    assert memory.search_batch(peak, [50, 111, 200, 10_000]) == [0, 1, 6, 94]
    for budget, b in ((200, 6), (10_000, 94)):
        assert peak(b) <= budget < peak(b + 1)


def test_cuda_autocast_policy_follows_cuda_op_lists():
    x = torch.randn(2, 8, 4, 4)
    w = torch.randn(8, 8, 3, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.nn.functional.group_norm(torch.nn.functional.conv2d(x, w), 4).dtype == torch.bfloat16
    with memory.cuda_autocast_policy(torch.bfloat16) as policy, torch.autocast("cpu", dtype=torch.bfloat16):
        y = torch.nn.functional.conv2d(x, w, padding=1)
        assert y.dtype == torch.bfloat16
        assert torch.nn.functional.group_norm(y, 4).dtype == torch.float32  # CUDA: norms in fp32
        assert y.softmax(-1).dtype == torch.float32
        assert torch.cat([y, x]).dtype == torch.float32
        torch.nn.functional.conv2d(x, w)
        assert len(policy.cache) == 1  # the weight's bf16 copy is cast once and reused
    # left: CPU autocast is itself again
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.nn.functional.group_norm(torch.nn.functional.conv2d(x, w), 4).dtype == torch.bfloat16


def test_data_dependent_reads_on_fake_tensors_get_fixed_values():
    mode = memory.PlanningFakeMode()
    with mode:
        r = torch.rand(3)
        assert (r < 0.5).tolist() == [True, True, True]
        assert torch.randint(0, 5, (2,)).tolist() == [0, 0]
        assert bool(torch.isfinite(r.sum()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_planner_against_a_real_cuda_step(tmp_path):
    cfg = compose_train(["experiment=smoke", "trainer.precision=bf16-mixed"], tmp_path)
    est = memory.estimate(cfg, emulate_cuda=True)
    torch.manual_seed(0)
    model = instantiate_model(cfg)
    model.configure_trainable()
    model.setup("fit")
    model.to("cuda").train()
    s = memory.setting_of(cfg)
    batch = memory.make_batch(s.batch_size, s.num_frames, *s.resolution, device="cuda")
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4, fused=True)
    memory.prime_optimizer(opt)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    memory.train_step(model, opt, batch, 0, torch.bfloat16, s.clip)
    torch.cuda.synchronize()
    real = torch.cuda.max_memory_allocated()
    assert base > 0
    assert abs(est.peak / real - 1) < 0.10, (est.peak, real)
