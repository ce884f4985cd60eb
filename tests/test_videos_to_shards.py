"""scripts/videos_to_shards.py: WebVid CSV + mp4 folder -> shards; missing/unreadable reported; resumable."""

from __future__ import annotations

import csv
import json
import tarfile

import videos_to_shards

from i2vlab.data.toy import make_toy_video
from i2vlab.utils.video_io import write_video


def _webvid(tmp_path, n=7):
    videos = tmp_path / "videos"
    rows = []
    for i in range(n):
        page = f"{i % 2:03d}_{i % 2:03d}"
        rows.append(
            {
                "videoid": str(1000 + i),
                "name": f"clip number {i}",
                "page_dir": page,
                "duration": "PT00H00M05S",
            }
        )
        if i == 3:
            continue  # missing file
        d = videos / page
        d.mkdir(parents=True, exist_ok=True)
        if i == 5:
            (d / f"{1000 + i}.mp4").write_bytes(b"garbage, not an mp4")  # unreadable
            continue
        write_video(d / f"{1000 + i}.mp4", make_toy_video(i, num_frames=6, height=32, width=32).frames)
    with open(tmp_path / "webvid.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return tmp_path / "webvid.csv", videos


def test_converts_reports_and_resumes(tmp_path, capsys):
    csv_path, videos = _webvid(tmp_path)
    out = tmp_path / "shards"
    args = [
        "--csv",
        str(csv_path),
        "--videos",
        str(videos),
        "--out",
        str(out),
        "--videos-per-shard",
        "3",
        "--workers",
        "2",
    ]
    totals = videos_to_shards.main(args)
    assert totals == {"shards": 3, "written": 5, "missing": 1, "unreadable": 1, "unsafe": 0}
    shards = sorted(out.glob("shard-*.tar"))
    assert [s.name for s in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    with tarfile.open(shards[0]) as tf:
        names = tf.getnames()
        assert "1000.mp4" in names and "1000.txt" in names
        assert tf.extractfile("1000.txt").read().decode() == "clip number 0"
        meta = json.loads(tf.extractfile("1000.json").read())
    assert meta["num_frames"] == 6 and meta["width"] == 32 and meta["source_id"] == "1000"
    assert meta["page_dir"] == "000_000"
    reports = {r.name: json.loads(r.read_text()) for r in (out / "_reports").glob("shard-*.json")}
    assert reports["shard-000001.json"]["missing"] == ["1003"]
    assert reports["shard-000001.json"]["unreadable"][0].startswith("1005")

    # resume: a finished shard is not rewritten, a missing one is
    mtime = shards[0].stat().st_mtime_ns
    shards[2].unlink()
    capsys.readouterr()
    totals = videos_to_shards.main(args)
    assert "2 already done" in capsys.readouterr().out
    assert shards[0].stat().st_mtime_ns == mtime and shards[2].exists()
    assert totals["written"] == 5


def test_shards_feed_the_datamodule(tmp_path):
    from i2vlab.data.datamodule import VideoShardDataset

    csv_path, videos = _webvid(tmp_path, n=3)
    out = tmp_path / "shards"
    videos_to_shards.main(
        ["--csv", str(csv_path), "--videos", str(videos), "--out", str(out), "--workers", "1"]
    )
    ds = VideoShardDataset(
        str(out),
        num_frames=4,
        frame_stride=1,
        resolution=(32, 32),
        shuffle_buffer=0,
        resampled=False,
        random_start=False,
    )
    got = list(ds)
    assert [s["caption"] for s in got] == ["clip number 0", "clip number 1", "clip number 2"]
    assert got[0]["video"].shape == (4, 3, 32, 32)


def test_video_ids_that_point_outside_the_videos_folder_are_refused(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "1.mp4", make_toy_video(1, num_frames=6, height=32, width=32).frames)
    secret = make_toy_video(2, num_frames=6, height=32, width=32).frames
    write_video(tmp_path / "outside.mp4", secret)  # must never be read into a shard
    rows = [
        {"videoid": "1", "name": "fine", "page_dir": ""},
        {"videoid": "../outside", "name": "escape", "page_dir": ""},
        {"videoid": "outside", "name": "escape by page_dir", "page_dir": ".."},
        {"videoid": str(tmp_path / "outside"), "name": "absolute", "page_dir": ""},
    ]
    with open(tmp_path / "w.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    totals = videos_to_shards.main(
        [
            "--csv",
            str(tmp_path / "w.csv"),
            "--videos",
            str(videos),
            "--out",
            str(tmp_path / "s"),
            "--workers",
            "1",
        ]
    )
    assert totals["written"] == 1 and totals["unsafe"] == 3
    names = tarfile.open(tmp_path / "s" / "shard-000000.tar").getnames()
    assert sorted(names) == ["1.json", "1.mp4", "1.txt"]
