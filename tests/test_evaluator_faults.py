"""Fault injection into the evaluator's feature cache: every damaged entry (garbage, truncated, empty,
one flipped payload byte, another entry's file, an old pickle) is named in the log and in results.json,
recomputed, rewritten, and the results are bit-identical to a clean run. Nothing is unpickled."""

import logging
import pickle
from pathlib import Path

import pytest
from eval_helpers import eval_cfg, write_set

from i2vlab.evaluation import Evaluator
from i2vlab.evaluation.cache import FeatureCache, note, read_note

METRICS = ["fvd", "clip_temp", "flow_score"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault_videos")
    write_set(root / "real", 4, num_frames=6, seed=0)
    write_set(root / "gen", 4, num_frames=6, seed=0, noise=0.1)
    return root


@pytest.fixture(scope="module")
def clean(videos, tmp_path_factory):
    t = tmp_path_factory.mktemp("clean")
    return Evaluator(eval_cfg(t, generated=str(videos / "gen"), real=str(videos / "real"), metrics=METRICS,
                              cache_dir=None)).run()  # fmt: skip


def _flip_last_byte(p: Path):
    b = bytearray(p.read_bytes())
    b[-3] ^= 0x01  # inside the last tensor's data
    p.write_bytes(bytes(b))


def _other_entry(p: Path):
    other = sorted(q for q in p.parent.parent.rglob("*.safetensors") if q != p)[0]
    p.write_bytes(other.read_bytes())


FAULTS = {
    "garbage": lambda p: p.write_bytes(b"\x00\xff garbage " * 10),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "empty": lambda p: p.write_bytes(b""),
    "flipped_payload_byte": _flip_last_byte,
    "another_entry": _other_entry,
}
EXPECT = {"garbage": "unreadable", "truncated": "unreadable", "empty": "unreadable",
          "flipped_payload_byte": "checksum mismatch", "another_entry": "foreign"}  # fmt: skip


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("feature", ["clip", "i3d"])
def test_a_damaged_entry_is_reported_recomputed_and_changes_nothing(
    videos, clean, tmp_path, caplog, fault, feature
):
    cfg = eval_cfg(tmp_path, generated=str(videos / "gen"), real=str(videos / "real"), metrics=METRICS)
    first = Evaluator(cfg).run()
    assert first["cache"]["events"] == {"absent": first["cache"]["misses"]}
    entry = sorted((tmp_path / "cache").glob(f"{feature}-*/*/*.safetensors"))[0]
    FAULTS[fault](entry)
    with caplog.at_level(logging.WARNING, logger="i2vlab.evaluation"):
        res = Evaluator({**cfg, "output_dir": str(tmp_path / "again")}).run()
    warned = [r.getMessage() for r in caplog.records if "feature cache" in r.getMessage()]
    assert len(warned) == 1 and EXPECT[fault] in warned[0] and "recomputed" in warned[0], warned
    assert len(res["cache"]["corrupt"]) == 1 and EXPECT[fault] in res["cache"]["corrupt"][0]["status"]
    assert res["cache"]["hits"] == res["cache"]["events"]["hit"] and res["cache"]["misses"] == 1
    for m in METRICS:
        assert res["metrics"][m]["value"] == clean["metrics"][m]["value"] == first["metrics"][m]["value"], m
    third = Evaluator({**cfg, "output_dir": str(tmp_path / "third")}).run()
    assert third["cache"]["misses"] == 0  # the entry was rewritten whole


def test_the_cache_never_unpickles(tmp_path):
    """A pickle planted where an entry would be (old ``.pt`` name, or the entry's own name) runs no code."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    cache = FeatureCache(tmp_path / "c")
    key = FeatureCache.make_key("x")
    p = cache.path("ns", key)
    p.parent.mkdir(parents=True)
    p.write_bytes(pickle.dumps(Evil()))
    p.with_suffix(".pt").write_bytes(pickle.dumps(Evil()))
    value, status = cache.get("ns", key)
    assert value is None and status.startswith("corrupt: unreadable") and not marker.exists()


def test_entries_round_trip_with_their_checksum(tmp_path):
    import torch

    cache = FeatureCache(tmp_path)
    v = {
        "a": torch.arange(6, dtype=torch.float64).view(2, 3),
        "b": torch.ones(3)[1:],
        **note("why", "because"),
    }
    cache.put("ns", "k" * 40, v)
    got, status = cache.get("ns", "k" * 40)
    assert status == "hit" and set(got) == set(v)
    assert all(torch.equal(got[k], v[k]) for k in v) and read_note(got) == ("why", "because")
    assert FeatureCache(None).get("ns", "k") == (None, "disabled")
    assert cache.get("ns", "0" * 40) == (None, "absent")
