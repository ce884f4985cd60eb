"""Shards: toy writing, reading back through the datamodule, skipping bad videos, resume positions."""

from __future__ import annotations

import io
import json
import random
import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds

from i2vlab.data.datamodule import VideoDataModule, VideoShardDataset
from i2vlab.data.shards import make_sample
from i2vlab.data.toy import make_toy_video
from i2vlab.data.transforms import resize_center_crop, sample_frame_indices
from i2vlab.utils.video_io import encode_mp4, read_video


def test_toy_video_is_deterministic_and_captioned():
    a, b, c = make_toy_video(3), make_toy_video(3), make_toy_video(4)
    assert np.array_equal(a.frames, b.frames) and a.caption == b.caption
    assert not np.array_equal(a.frames, c.frames)
    assert a.frames.shape == (24, 64, 64, 3) and a.frames.dtype == np.uint8
    assert any(m in a.caption for m in ("moving", "zooming", "rotating"))
    # the shape actually moves: consecutive frames differ
    assert np.abs(a.frames[0].astype(int) - a.frames[-1].astype(int)).sum() > 0


def test_toy_shards_layout(toy_data):
    shards = sorted((toy_data / "toy" / "train").glob("*.tar"))
    assert len(shards) == 2
    names = tarfile.open(shards[0]).getnames()
    keys = {n.rsplit(".", 1)[0] for n in names}
    assert len(keys) == 8
    assert {n.rsplit(".", 1)[1] for n in names} == {"mp4", "txt", "json"}
    meta = json.loads(
        tarfile.open(shards[0]).extractfile(sorted(n for n in names if n.endswith(".json"))[0]).read()
    )
    assert (
        meta["num_frames"] == 24
        and meta["height"] == 64
        and meta["fps"] == 8.0
        and meta["source_id"].startswith("toy-")
    )


def test_frame_index_sampling():
    rng = random.Random(0)
    idx, s = sample_frame_indices(24, 8, 3, rng)
    assert s == 3 and len(idx) == 8 and all(b - a == 3 for a, b in zip(idx, idx[1:])) and idx[-1] < 24
    # a drawn stride too large for the video falls back to the largest one in range that fits
    for _ in range(10):
        idx, s = sample_frame_indices(20, 8, [2, 5], rng)
        assert s == 2 and idx[-1] < 20
    assert sample_frame_indices(20, 8, [3, 5], rng) is None  # nothing in range fits
    assert sample_frame_indices(5, 8, 1, rng) is None  # too short even at stride 1
    strides = {sample_frame_indices(100, 4, [1, 6], rng)[1] for _ in range(200)}
    assert strides == {1, 2, 3, 4, 5, 6}


def test_resize_center_crop_shapes():
    x = torch.rand(3, 3, 40, 80)
    y = resize_center_crop(x, (32, 32))
    assert y.shape == (3, 3, 32, 32)
    # centre crop keeps the middle columns of an unscaled frame
    z = resize_center_crop(x, (40, 40))
    assert torch.allclose(z, x[..., 20:60])


def test_datamodule_reads_back_shapes_strides_captions(toy_data):
    dm = VideoDataModule(
        str(toy_data / "toy" / "train"),
        str(toy_data / "toy" / "val"),
        batch_size=2,
        num_workers=0,
        num_frames=6,
        frame_stride=[1, 3],
        resolution=(32, 48),
        epoch_length=8,
    )
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 4
    captions = {make_toy_video(s).caption for s in range(16)}
    for b in batches:
        assert b["video"].shape == (2, 6, 3, 32, 48)
        assert b["video"].min() >= -1 and b["video"].max() <= 1
        assert all(c in captions for c in b["caption"])
        assert set(b["frame_stride"].tolist()) <= {1, 2, 3}
        assert torch.all(b["fps"] == 8.0)
    val = list(dm.val_dataloader())
    assert sum(len(b["key"]) for b in val) == 4
    assert all(torch.all(b["frame_stride"] == 1) for b in val)


def test_decoded_clip_matches_source_frames(toy_data):
    """Stride and start are honoured: the clip equals the source frames at those indices."""
    ds = VideoShardDataset(
        str(toy_data / "toy" / "val"),
        num_frames=4,
        frame_stride=3,
        resolution=(64, 64),
        shuffle_buffer=0,
        resampled=False,
        random_start=False,
    )
    s = next(iter(ds))
    shard = sorted((toy_data / "toy" / "val").glob("*.tar"))[0]
    mp4 = tarfile.open(shard).extractfile(f"{s['key']}.mp4").read()
    frames, _ = read_video(mp4, [0, 3, 6, 9])
    ref = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert s["frame_stride"] == 3
    assert torch.allclose(s["video"], ref, atol=1e-5)
    seed = int(s["key"][3:])
    assert s["caption"] == make_toy_video(seed).caption


def _bad_shard(path, good_seed=1):
    good = make_toy_video(good_seed, num_frames=12)
    short = make_toy_video(good_seed + 1, num_frames=3)
    mp4 = encode_mp4(good.frames)
    with wds.TarWriter(str(path)) as sink:
        sink.write(make_sample("good", mp4, good.caption, good.meta))
        sink.write(make_sample("corrupt", b"\x00\x00\x00\x18ftypmp42" + bytes(200), "broken", {}))
        sink.write(make_sample("truncated", mp4[: len(mp4) // 3], "cut", {}))
        sink.write(make_sample("short", encode_mp4(short.frames), short.caption, short.meta))
        sink.write(make_sample("good2", mp4, good.caption, good.meta))


def test_corrupt_and_short_videos_are_skipped_and_counted(tmp_path, caplog):
    _bad_shard(tmp_path / "bad.tar")
    ds = VideoShardDataset(
        str(tmp_path / "bad.tar"),
        num_frames=8,
        frame_stride=1,
        resolution=(32, 32),
        shuffle_buffer=0,
        resampled=False,
        random_start=False,
    )
    out = list(ds)
    assert [s["key"] for s in out] == ["good", "good2"]
    last = out[-1]["health"]
    assert last["short"] == 1
    assert last["corrupt"] == 2
    assert "skipping" in caplog.text


def test_persistent_failures_raise_a_clear_error(tmp_path):
    with wds.TarWriter(str(tmp_path / "all_bad.tar")) as sink:
        for i in range(5):
            sink.write(make_sample(f"bad{i}", b"not a video", "x", {}))
    ds = VideoShardDataset(
        str(tmp_path / "all_bad.tar"),
        num_frames=4,
        resolution=(32, 32),
        shuffle_buffer=0,
        resampled=True,
        max_consecutive_failures=5,
    )
    with pytest.raises(RuntimeError, match="could not be used"):
        next(iter(ds))


def test_missing_shards_error_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="make toy-data"):
        VideoShardDataset(str(tmp_path / "nowhere"))


def test_resume_positions_fast_forward_exactly(toy_data):
    """A stream resumed from recorded per-worker positions yields exactly what the original yielded next."""
    kw = dict(
        num_frames=4, frame_stride=[1, 3], resolution=(32, 32), shuffle_buffer=8, resampled=True, seed=3
    )
    ds = VideoShardDataset(str(toy_data / "toy" / "train"), **kw)
    it = iter(ds)
    first = [next(it) for _ in range(5)]
    ds2 = VideoShardDataset(str(toy_data / "toy" / "train"), **kw)
    ds2.resume_positions = {0: first[2]["raw_index"] + 1}
    resumed = iter(ds2)
    for ref in first[3:]:
        got = next(resumed)
        assert got["key"] == ref["key"] and got["frame_stride"] == ref["frame_stride"]
        assert torch.equal(got["video"], ref["video"])


def test_datamodule_state_roundtrip(toy_data):
    dm = VideoDataModule(str(toy_data / "toy" / "train"), num_workers=0, num_frames=4, resolution=(32, 32))
    dm.positions, dm.positions_epoch = {0: 7}, 2
    state = dm.state_dict()
    dm2 = VideoDataModule(str(toy_data / "toy" / "train"), num_workers=0, num_frames=4, resolution=(32, 32))
    dm2.load_state_dict(state)
    dm2.setup("fit")
    dm2.prepare_epoch(2)
    assert dm2.train_dataset.resume_positions == {0: 7}
    dm2.prepare_epoch(3)  # a new epoch starts from its beginning
    assert dm2.train_dataset.resume_positions == {}


def test_gif_and_frame_folder_reading(tmp_path):
    from PIL import Image

    from i2vlab.utils.video_io import write_video

    seed = next(s for s in range(50) if "moving" in make_toy_video(s).caption)  # all frames differ
    v = make_toy_video(seed, num_frames=4, height=32, width=32).frames
    write_video(tmp_path / "a.gif", v, fps=4)
    frames, fps = read_video(tmp_path / "a.gif")
    assert frames.shape == (4, 32, 32, 3) and abs(fps - 4) < 0.1
    (tmp_path / "frames").mkdir()
    for i, f in enumerate(v):
        Image.fromarray(f).save(tmp_path / "frames" / f"{i:03d}.png")
    frames, _ = read_video(tmp_path / "frames")
    assert np.array_equal(frames, v)


def test_mp4_roundtrip_is_close():
    v = make_toy_video(9, num_frames=6, height=32, width=32).frames
    frames, fps = read_video(encode_mp4(v, fps=8))
    assert frames.shape == v.shape and fps == pytest.approx(8.0)
    assert np.abs(frames.astype(float) - v.astype(float)).mean() < 6.0


def test_mp4_bytes_are_readable_from_memory():
    v = make_toy_video(2, num_frames=5, height=32, width=32).frames
    data = encode_mp4(v)
    assert isinstance(data, bytes) and io.BytesIO(data).getbuffer().nbytes > 100
    assert read_video(data)[0].shape[0] == 5


def test_validation_clips_split_evenly_across_ranks_even_with_one_shard(toy_data, monkeypatch):
    """Every rank gets the same number of distinct validation clips (uneven counts deadlock DDP)."""
    dm = VideoDataModule(
        str(toy_data / "toy" / "train"),
        str(toy_data / "toy" / "val"),
        batch_size=1,
        num_workers=0,
        num_frames=4,
        resolution=(32, 32),
        val_num_samples=4,
    )
    keys = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        dm.setup("fit")
        keys.append([k for b in dm.val_dataloader() for k in b["key"]])
    assert len(list((toy_data / "toy" / "val").glob("*.tar"))) == 1  # fewer shards than ranks
    assert len(keys[0]) == len(keys[1]) == 2 and not set(keys[0]) & set(keys[1])
