"""The papers' ablations as recipes (``conf/experiment/ablation/<method>/<name>.yaml``) and their toy
twins (``toy_<name>.yaml``): every recipe composes, every twin changes exactly what its recipe changes,
the switches the ablations need behave as documented, and every twin trains (or, where nothing trains,
samples) on CPU."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from conftest import CONF, compose_train
from omegaconf import OmegaConf

from i2vlab.training import instantiate_model

ABLATIONS = CONF / "experiment" / "ablation"
RECIPES = sorted(
    f"ablation/{p.parent.name}/{p.stem}" for p in ABLATIONS.glob("*/*.yaml") if not p.stem.startswith("toy_")
)
#: keys a twin may set to another value than its recipe (sizes of the tiny model)
SIZE_KEYS = {"method.sampling.gate_layers"}
#: keys that are not part of an ablation's switch
IGNORED = ("task_name", "tags", "hydra.", "ablation.", "init_from")


def twin(recipe: str) -> str:
    head, name = recipe.rsplit("/", 1)
    return f"{head}/toy_{name}"


def base_of(recipe: str) -> str:
    """The experiment a recipe file builds on (the first entry of its defaults list)."""
    text = (CONF / "experiment" / f"{recipe}.yaml").read_text()
    return OmegaConf.create(text).defaults[0].removeprefix("/experiment/")


def flat(cfg) -> dict:
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return out


def switch(name: str, tmp_path: Path) -> dict:
    """What ``name`` changes relative to the experiment it builds on."""
    a, b = (
        flat(compose_train([f"experiment={name}"], tmp_path)),
        flat(compose_train([f"experiment={base_of(name)}"], tmp_path)),
    )
    keys = {k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>")}
    return {k: a.get(k, "<unset>") for k in keys if not k.startswith(IGNORED)}


def test_every_recipe_has_a_toy_twin_and_documents_its_row():
    assert len(RECIPES) == 19
    for r in RECIPES:
        assert (CONF / "experiment" / f"{twin(r)}.yaml").is_file(), f"{r} has no toy twin"
        text = (CONF / "experiment" / f"{r}.yaml").read_text()
        assert text.startswith("# @package _global_") and "python train.py" in text, r
    names = {p.stem for p in ABLATIONS.glob("*/*.yaml")}
    assert all(n.removeprefix("toy_") in names for n in names)  # no twin without a recipe


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_and_twin_compose_and_change_the_same_thing(recipe, tmp_path):
    paper = compose_train([f"experiment={recipe}"], tmp_path)
    toy = compose_train([f"experiment={twin(recipe)}"], tmp_path)
    for cfg in (paper, toy):
        assert cfg.method._target_.startswith("i2vlab.methods.")
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        assert cfg.ablation.paper and cfg.ablation.table and cfg.ablation.row
    assert OmegaConf.to_container(paper.ablation) == OmegaConf.to_container(toy.ablation)
    a, b = switch(recipe, tmp_path), switch(twin(recipe), tmp_path)
    assert set(a) == set(b), f"{recipe}: recipe changes {sorted(a)}, twin {sorted(b)}"
    for k in set(a) - SIZE_KEYS:
        assert a[k] == b[k], f"{recipe}: {k} is {a[k]!r} in the recipe, {b[k]!r} in the twin"
    assert a or recipe.endswith("/full"), f"{recipe} changes nothing"


# ----------------------------------------------------------------------------------------------
# DynamiCrafter switches
def _dynamicrafter(tmp_path: Path, *extra: str):
    torch.manual_seed(0)
    m = instantiate_model(compose_train(["experiment=toy_dynamicrafter_stage3", *extra], tmp_path))
    for p in m.parameters():  # a non-trivial network (zero-initialised layers included)
        if p.ndim > 0 and not p.any():
            torch.nn.init.normal_(p, std=0.05)
    return m.eval()


def _images(b: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, 32, 32, generator=g) * 2 - 1


def test_without_context_stream_the_unet_sees_the_text_only(tmp_path):
    m = _dynamicrafter(tmp_path, "method.context_stream=false")
    images = _images()
    assert m.pipe.image_context(images).shape == (2, 0, 32)
    text = m.encode_prompt(["a red circle", "a blue square"])
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 4, 8, 8, 8, generator=g), torch.tensor([500, 20])
    concat = torch.randn(2, 4, 8, 8, 8, generator=g)
    cond = {"context": torch.cat([text, m.pipe.image_context(images)], 1), "concat": concat, "fs": None}
    with torch.no_grad():
        out = m.pipe.denoise(x, t, cond)
        ref = m.unet(torch.cat([x, concat], 1), t, encoder_hidden_states=text).sample
        full = _dynamicrafter(tmp_path)
        cond_full = {**cond, "context": torch.cat([text, full.pipe.image_context(images)], 1)}
        with_ctx = full.pipe.denoise(x, t, cond_full)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert not torch.allclose(out, with_ctx)
    loss, _ = m.compute_loss(
        {"video": _images(2)[:, None].repeat(1, 8, 1, 1, 1), "caption": ["a", "b"],
         "fps": torch.tensor([24.0, 24.0]), "frame_stride": torch.tensor([2, 2])},
        m.step_generator(),
    )  # fmt: skip
    assert torch.isfinite(loss).all()


def test_global_token_feeds_the_context_learner_the_class_token_only(tmp_path):
    g, a = _dynamicrafter(tmp_path, "method.image_tokens=global"), _dynamicrafter(tmp_path)
    images = _images()
    from i2vlab.models.dynamicrafter import clip_preprocess

    with torch.no_grad():
        tokens = g.image_encoder(pixel_values=clip_preprocess(images, 32)).last_hidden_state
        expected = g.image_proj_model(tokens[:, :1])
        got = g.pipe.image_context(images)
        allt = a.pipe.image_context(images)
    assert tokens.shape[1] == 17 and got.shape == allt.shape == (2, 32, 32)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not torch.allclose(got, allt)
    with pytest.raises(Exception, match="image_tokens must be all or global"):
        _dynamicrafter(tmp_path, "method.image_tokens=cls")


def test_gate_scale_multiplies_lambda_of_the_chosen_layers_while_sampling(tmp_path):
    from i2vlab.models.dynamicrafter import dual_cross_attention_layers, gate_values
    from i2vlab.pipelines.dynamicrafter import sample_dynamicrafter

    m = _dynamicrafter(tmp_path)
    procs = dual_cross_attention_layers(m.unet)
    names = [n for n, x in m.unet.named_modules() if any(x is p for p in procs)]
    assert [n.removesuffix(".processor") for n in names] == list(gate_values(m.unet))  # = lambda/NN order
    with torch.no_grad():
        for i, p in enumerate(procs):
            p.alpha.fill_(0.1 * (i + 1))
    kw = dict(num_frames=8, seed=3, num_inference_steps=3, return_latents=True, guidance_scale=3.0)
    images = _images()
    base = sample_dynamicrafter(m.pipe, ["a", "b"], images, **kw)
    same = sample_dynamicrafter(m.pipe, ["a", "b"], images, gate_scale=1.0, gate_layers=[1, 2], **kw)
    torch.testing.assert_close(same, base, rtol=0, atol=0)
    scaled = sample_dynamicrafter(m.pipe, ["a", "b"], images, gate_scale=0.5, gate_layers=[1, 2], **kw)
    assert all(p.gate_multiplier == 1.0 for p in procs)  # restored
    # the same video with lambda of layers 1, 2 set to half through alpha itself
    with torch.no_grad():
        for i in (1, 2):
            lam = math.tanh(0.1 * (i + 1)) + 1
            procs[i].alpha.fill_(math.atanh(0.5 * lam - 1))
    by_alpha = sample_dynamicrafter(m.pipe, ["a", "b"], images, **kw)
    torch.testing.assert_close(scaled, by_alpha, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(scaled, base, atol=1e-4)
    with pytest.raises(ValueError, match="gate_layers"):
        sample_dynamicrafter(m.pipe, ["a", "b"], images, gate_scale=2.0, gate_layers=[9], **kw)


# ----------------------------------------------------------------------------------------------
# Generative Inbetweening switches
def _inbetween(tmp_path: Path, *extra: str, experiment: str = "toy_inbetween"):
    torch.manual_seed(0)
    m = instantiate_model(compose_train([f"experiment={experiment}", *extra], tmp_path))
    m.configure_trainable()
    for p in m.parameters():
        if p.ndim > 0 and not p.any():
            torch.nn.init.normal_(p, std=0.05)
    return m


def _clip(b: int = 2, f: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, f, 3, 32, 32, generator=g) * 2 - 1


def test_without_rotation_the_backward_model_trains_on_its_own_attention(tmp_path):
    from i2vlab.models.attention_control import AttentionFlipProcessor

    m = _inbetween(tmp_path, experiment="ablation/inbetween/toy_wo_rotation")
    assert not any(isinstance(p, AttentionFlipProcessor) for p in m.unet.attn_processors.values())
    m.pipe.attention_store.clear()
    loss, _ = m.compute_loss({"video": _clip(), "caption": ["", ""]}, m.step_generator())
    assert len(m.pipe.attention_store) == 0  # no reference pass
    loss.mean().backward()
    grads = {n: p.grad for n, p in m.named_parameters() if p.requires_grad}
    assert any(".to_q." in n for n in grads) and all(
        g is not None and g.abs().sum() > 0 for g in grads.values()
    )


def test_rotated_base_backward_path_is_the_frozen_forward_model_with_rotated_maps(tmp_path):
    from i2vlab.models.attention_control import (
        AttentionFlipProcessor,
        AttentionStoreProcessor,
        install_flip_processors,
    )
    from i2vlab.pipelines.inbetween import sample_inbetween

    m = _inbetween(tmp_path)
    with torch.no_grad():  # a fine-tuned backward model that differs from the forward one
        for n, p in m.unet.named_parameters():
            if "attn1.to_v" in n:
                p.add_(0.1)
    pipe = m.pipe
    view = pipe.rotated_base_unet(["up"])
    assert pipe.rotated_base_unet(["up"]) is view
    ptrs = {p.data_ptr() for p in pipe.ref_unet.parameters()}
    assert all(p.data_ptr() in ptrs for p in view.parameters())  # no weights copied
    procs = view.attn_processors
    flips = [n for n, p in procs.items() if isinstance(p, AttentionFlipProcessor)]
    assert flips and all(n.startswith("up_blocks.") for n in flips)
    assert not any(isinstance(p, AttentionStoreProcessor) for p in procs.values())
    assert isinstance(pipe.ref_unet.attn_processors[flips[0]], AttentionStoreProcessor)  # untouched

    frames = _clip(b=1, f=2)
    first, last = frames[:, 0], frames[:, 1]
    kw = dict(num_frames=4, num_inference_steps=3, noise_injection_steps=1, seed=5, return_latents=True)
    every = sample_inbetween(pipe, first, last, backward="rotated_base", rotate_blocks=None, **kw)
    ref = copy.deepcopy(pipe.ref_unet)
    install_flip_processors(ref, pipe.attention_store, pipe.controlled_layers)
    expected = sample_inbetween(pipe, first, last, backward_unet=ref, **kw)
    torch.testing.assert_close(every, expected, rtol=0, atol=0)
    finetuned = sample_inbetween(pipe, first, last, **kw)
    up_only = sample_inbetween(pipe, first, last, backward="rotated_base", **kw)
    assert not torch.allclose(every, finetuned) and not torch.allclose(every, up_only)
    video = pipe(["", ""][:1], images=first, last_images=last, num_frames=4, num_inference_steps=2,
                 backward="rotated_base", rotate_blocks=["up"], noise_injection_steps=0)  # fmt: skip
    assert video.shape == (1, 4, 3, 32, 32)
    with pytest.raises(ValueError, match="rotate_blocks"):
        pipe.rotated_base_unet(["left"])


# ----------------------------------------------------------------------------------------------
# every toy twin, a few steps
TRAIN = [
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "data.num_workers=0",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "method.validation.num_timesteps=1",
    "method.validation.sample_steps=2",
]
#: twins whose switch acts while sampling: their validation video exercises it
SAMPLING = {"gate_study", "noise_injection", "wo_fsp", "fsp_grid"}


@pytest.mark.slow
def test_every_toy_twin_trains_a_few_steps(tmp_path, toy_data):
    import csv

    from i2vlab.pipelines import load_pipeline
    from i2vlab.training import train

    for recipe in RECIPES:
        name = recipe.rsplit("/", 1)[1]
        run = tmp_path / recipe.replace("/", "_")
        samples = 1 if name in SAMPLING else 0
        cfg = compose_train(
            [f"experiment={twin(recipe)}", *TRAIN, f"method.validation.num_samples={samples}"], run, toy_data
        )
        train(cfg)
        assert (run / "export" / "trainable.safetensors").is_file(), recipe
        if cfg.get("train", True):
            rows = list(csv.DictReader(next(run.glob("csv/**/metrics.csv")).open()))
            losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
            assert len(losses) == 2 and all(math.isfinite(x) for x in losses), recipe
            assert len(list((run / "samples").glob("*.mp4"))) == samples, recipe
        else:  # nothing trains (w/o FT, TRF, flow): the run samples with its recorded settings
            pipe = load_pipeline(run)
            assert pipe.sampling["method"] == cfg.method.sampling.method
            frames = _clip(b=1, f=2)
            video = pipe([""], images=frames[:, 0], last_images=frames[:, 1], num_frames=4,
                         num_inference_steps=2, seed=0)  # fmt: skip
            assert video.shape == (1, 4, 3, 32, 32) and torch.isfinite(video).all(), recipe
