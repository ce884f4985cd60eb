"""Backbones and network pieces. Builders take a ``pretrained`` path/hub id (real weights) or
``None`` (random init from the architecture ``config``); under ``build_on_meta()`` they build
full-size architectures on the meta device without reading any weights."""
