"""Validation videos: keyframe methods sample between each validation clip's first and last frames."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_train

from i2vlab.training import instantiate_model


@pytest.mark.parametrize(
    ("experiment", "keyframes"),
    [
        ("smoke", False),
        ("toy_i2v_adapter", False),
        ("toy_dynamicrafter_interp", True),
        ("toy_inbetween", True),
    ],
)
def test_validation_sample_inputs(experiment, keyframes, tmp_path):
    model = instantiate_model(compose_train([f"experiment={experiment}"], tmp_path))
    video = torch.rand(3, 5, 3, 32, 32) * 2 - 1
    inputs = model.validation_sample_inputs({"video": video, "caption": ["a", "b", "c"]}, 2)
    assert inputs["prompts"] == ["a", "b"] and inputs["num_frames"] == 5
    assert torch.equal(inputs["images"], video[:2, 0])
    assert ("last_images" in inputs) == keyframes
    if keyframes:
        assert torch.equal(inputs["last_images"], video[:2, -1])
