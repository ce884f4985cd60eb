"""Data faults: every bad shard, sample, caption or video is skipped or repaired, counted and named;
nothing crashes the stream and nothing hangs it."""

from __future__ import annotations

import io
import json
import logging
import tarfile
import time

import numpy as np
import pytest
import torch
import webdataset as wds

from i2vlab.data.datamodule import VideoDataModule, VideoShardDataset
from i2vlab.data.shards import list_shards, make_sample
from i2vlab.data.toy import make_toy_video
from i2vlab.utils.video_io import encode_mp4, open_video


def _ds(shards, **kw) -> VideoShardDataset:
    args = dict(num_frames=4, frame_stride=1, resolution=(32, 32), shuffle_buffer=0, resampled=False)
    args.update(kw)
    return VideoShardDataset(shards, **args)


def _good(key: str, seed: int = 0) -> dict:
    v = make_toy_video(seed, num_frames=8, height=32, width=32)
    return make_sample(key, encode_mp4(v.frames), v.caption, v.meta)


def _write(path, samples) -> None:
    with wds.TarWriter(str(path)) as sink:
        for s in samples:
            sink.write(s)


def _raw_tar(path, members: list[tuple[str, bytes]]) -> None:
    """A tar with exactly these members, in this order (TarWriter cannot write duplicates)."""
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


# -- shard resolution -------------------------------------------------------------------------------
def test_a_brace_pattern_matching_nothing_fails_up_front_naming_pattern_and_first_missing(tmp_path):
    pattern = str(tmp_path / "missing" / "shard-{000000..000009}.tar")
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError) as e:
        VideoDataModule(pattern, num_workers=2).setup("fit")
    msg = str(e.value)
    assert time.perf_counter() - t0 < 5
    assert "data.train_shards" in msg and "0 of 10 shards found" in msg
    assert "shard-000000.tar" in msg


def test_a_partly_matching_pattern_names_how_many_were_found(tmp_path):
    for i in (0, 1, 2):
        _write(tmp_path / f"shard-{i:06d}.tar", [_good(f"k{i}", i)])
    with pytest.raises(FileNotFoundError, match=r"3 of 5 shards found; first missing: .*shard-000003\.tar"):
        list_shards(str(tmp_path / "shard-{000000..000004}.tar"))
    assert len(list_shards(str(tmp_path / "shard-{000000..000002}.tar"))) == 3


def test_shards_as_glob_list_and_list_file(tmp_path):
    for i in range(3):
        _write(tmp_path / f"shard-{i:06d}.tar", [_good(f"k{i}", i)])
    names = [str(tmp_path / f"shard-{i:06d}.tar") for i in range(3)]
    assert list_shards(str(tmp_path / "shard-*.tar")) == names
    assert list_shards(names[:2]) == names[:2]
    listing = tmp_path / "train.txt"
    listing.write_text("# my shards\nshard-000000.tar\n\n" + names[2] + "  # absolute\n")
    assert list_shards(str(listing)) == [names[0], names[2]]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .tar shards"):
        list_shards(str(tmp_path / "empty"))
    ds = _ds(str(listing))
    assert [s["key"] for s in ds] == ["k0", "k2"]


# -- samples ------------------------------------------------------------------------------------------
def test_non_utf8_caption_bad_json_and_missing_caption_are_repaired_counted_and_named(tmp_path, caplog):
    good = _good("a")
    bad_caption = {**_good("b", 1), "txt": b"caf\xe9 au lait \xff"}
    bad_json = {**_good("c", 2), "json": b"{not json"}
    no_caption = {k: v for k, v in _good("d", 3).items() if k != "txt"}
    _write(tmp_path / "s.tar", [good, bad_caption, bad_json, no_caption])
    with caplog.at_level(logging.WARNING):
        out = list(_ds(str(tmp_path / "s.tar")))
    assert [s["key"] for s in out] == ["a", "b", "c", "d"]
    assert out[1]["caption"] == "caf\ufffd au lait \ufffd"
    assert out[2]["fps"] == 8.0  # the video's own fps
    assert out[3]["caption"] == ""
    h = out[-1]["health"]
    assert (h["bad_caption"], h["bad_meta"], h["missing_caption"]) == (1, 1, 1)
    assert "caption of b" in caplog.text and "metadata of c" in caplog.text


def test_truncated_tar_keeps_samples_before_the_cut_counts_the_shard_and_logs_it_once(tmp_path, caplog):
    _write(tmp_path / "full.tar", [_good(f"k{i}", i) for i in range(4)])
    data = (tmp_path / "full.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: int(len(data) * 0.6)])
    ds = _ds(str(tmp_path / "cut.tar"))
    with caplog.at_level(logging.WARNING):
        first = list(ds)
        second = list(ds)
    assert 1 <= len(first) < 4 and [s["key"] for s in first] == [s["key"] for s in second]
    assert ds.health["truncated_shard"] == 1  # found after the last whole sample, counted in the stream
    assert sum("cut.tar" in r.getMessage() for r in caplog.records) == 1  # one line per shard, not per pass


def test_a_shard_that_is_not_a_tar_and_duplicate_keys_are_counted(tmp_path):
    (tmp_path / "a.tar").write_bytes(b"this is not a tar file" * 100)
    s0, s1 = _good("k0", 0), _good("k1", 1)
    members = [
        (f"k0.{ext}", s0[ext] if isinstance(s0[ext], bytes) else s0[ext].encode()) for ext in ("mp4", "txt")
    ]
    members += [
        (f"k0.{ext}", s1[ext] if isinstance(s1[ext], bytes) else s1[ext].encode()) for ext in ("mp4", "txt")
    ]
    members += [
        (f"k1.{ext}", s1[ext] if isinstance(s1[ext], bytes) else s1[ext].encode()) for ext in ("mp4", "txt")
    ]
    members += [
        (f"k0.{ext}", s1[ext] if isinstance(s1[ext], bytes) else s1[ext].encode()) for ext in ("mp4", "txt")
    ]
    _raw_tar(tmp_path / "b.tar", members)
    ds = _ds([str(tmp_path / "a.tar"), str(tmp_path / "b.tar")])
    out = list(ds)
    assert [s["key"] for s in out] == ["k0", "k1"]
    assert out[0]["caption"] == s0["txt"]  # the first copy is kept, not merged with the second
    h = ds.health
    assert (h["bad_shard"], h["duplicate_key"]) == (1, 2)


def test_a_resampled_stream_where_no_shard_is_readable_fails_instead_of_hanging(tmp_path):
    for i in range(3):
        (tmp_path / f"s{i}.tar").write_bytes(b"\x00" * 1024)
    ds = _ds(str(tmp_path), resampled=True, max_consecutive_failures=10)
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="shards in a row gave no sample"):
        next(iter(ds))
    assert time.perf_counter() - t0 < 10


def test_a_video_decord_rejects_is_decoded_by_pyav_and_counted(tmp_path):
    frames = (np.random.default_rng(0).random((6, 80, 48, 3)) * 255).astype(np.uint8)  # 48 wide, 80 high
    mp4 = encode_mp4(frames)
    reader = open_video(mp4)
    got = reader.get([0, 5])
    assert reader.decoder == "pyav" and got.shape == (2, 80, 48, 3)
    _write(tmp_path / "s.tar", [make_sample("odd", mp4, "an odd size", {"fps": 8.0})])
    out = list(_ds(str(tmp_path / "s.tar"), resolution=(40, 24)))
    assert len(out) == 1 and out[0]["video"].shape == (4, 3, 40, 24)
    assert out[0]["health"]["decoded_by_pyav"] == 1


# -- totals --------------------------------------------------------------------------------------------
def _batches(dm: VideoDataModule, n: int, epoch: int = 0):
    class _T:  # the two attributes on_after_batch_transfer reads
        training = True
        current_epoch = epoch

    dm.trainer = _T()
    out = []
    for i, b in enumerate(dm.train_dataloader()):
        dm.on_after_batch_transfer(b, 0)
        out.append(b)
        if i + 1 == n:
            break
    return out


def test_counts_are_summed_over_workers_and_carried_across_a_resume(tmp_path):
    for i in range(2):  # each shard (one per worker): 2 good, 1 corrupt, 1 non-UTF-8 caption
        _write(
            tmp_path / f"s{i}.tar",
            [
                _good(f"g{i}a", i),
                make_sample(f"bad{i}", b"\x00" * 300, "broken", {}),
                {**_good(f"g{i}b", 10 + i), "txt": b"\xff\xfe"},
                _good(f"g{i}c", 20 + i),
            ],
        )
    kw = dict(
        batch_size=1, num_workers=2, num_frames=4, resolution=(32, 32), shuffle_buffer=0, epoch_length=6
    )
    dm = VideoDataModule(str(tmp_path), **kw)
    dm.setup("fit")
    dm.train_dataset.resampled = False  # one pass: every worker reads its one shard once
    _batches(dm, 6)
    totals = dm.health_totals()
    assert (totals["corrupt"], totals["bad_caption"]) == (2, 2)  # not the max of one worker (1, 1)
    state = dm.state_dict()
    dm2 = VideoDataModule(str(tmp_path), **kw)
    dm2.load_state_dict(state)
    assert dm2.health_totals()["corrupt"] == 2
    dm2._start_epoch(1)  # a later epoch keeps the totals of the earlier ones
    assert dm2.health_totals()["bad_caption"] == 2


def test_the_loader_has_a_stall_timeout_when_it_uses_workers(tmp_path):
    _write(tmp_path / "s.tar", [_good("a")])
    dm = VideoDataModule(str(tmp_path), num_workers=1, timeout_s=42, num_frames=4, resolution=(32, 32))
    dm.setup("fit")
    assert dm.train_dataloader().timeout == 42
    dm0 = VideoDataModule(str(tmp_path), num_workers=0, num_frames=4, resolution=(32, 32))
    dm0.setup("fit")
    assert dm0.train_dataloader().timeout == 0


def test_health_snapshot_collates_into_per_sample_tensors(tmp_path):
    _write(tmp_path / "s.tar", [_good("a"), _good("b", 1)])
    dm = VideoDataModule(str(tmp_path), num_workers=0, batch_size=2, num_frames=4, resolution=(32, 32))
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert isinstance(b["health"]["corrupt"], torch.Tensor) and b["health"]["corrupt"].shape == (2,)
    assert json.dumps({k: v.tolist() for k, v in b["health"].items()})
