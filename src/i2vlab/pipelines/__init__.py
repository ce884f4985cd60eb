"""Inference: prompt (+ image(s)) -> video, one pipeline per method."""
