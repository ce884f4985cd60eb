"""The clip stream of one shard set (one pass, or resampled forever), inside a data-loader worker:
samples out of the tars (every fault counted, :mod:`i2vlab.data.tarstream`), a seeded shuffle
buffer, frame sampling, decoding (decord; PyAV for files decord rejects), resize and crop in uint8.
The data module around it (:mod:`i2vlab.data.datamodule`) splits work over ranks and workers and
keeps the resume position and the fault totals."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator, Sequence
from typing import Any

import webdataset as wds
from torch.utils.data import IterableDataset
from webdataset.utils import pytorch_worker_info

from i2vlab.data.health import DataHealth
from i2vlab.data.shards import list_shards
from i2vlab.data.tarstream import shard_samples
from i2vlab.data.transforms import sample_frame_indices, video_from_uint8
from i2vlab.utils.video_io import VideoDecodeError, open_video

log = logging.getLogger(__name__)


class VideoShardDataset(IterableDataset):
    """Iterable over clips from webdataset shards. See the module docstring for the pipeline.

    Args:
        shards: see :func:`~i2vlab.data.shards.list_shards` (folder, tar, brace pattern, glob, text
            file of shard paths, or a list of those); resolved and checked when the dataset is made.
        num_frames: frames per clip.
        frame_stride: fixed int, or ``[lo, hi]`` for a random stride per clip (returned in the sample).
        resolution: ``(h, w)`` after short-side resize and centre crop.
        shuffle_buffer: webdataset shuffle buffer size (0 = no shuffling, shards in order).
        resampled: draw shards with replacement forever (training); else one pass over the shards.
        random_start: random clip start (training) or always frame 0 (evaluation).
        max_consecutive_failures: raise (with a message) after this many unusable videos or
            unreadable shards in a row.
        shards_key: the config key named in error messages.
    """

    def __init__(
        self,
        shards: str | Sequence[str],
        num_frames: int = 16,
        frame_stride: int | Sequence[int] = 1,
        resolution: Sequence[int] = (256, 256),
        shuffle_buffer: int = 100,
        resampled: bool = True,
        random_start: bool = True,
        seed: int = 0,
        max_consecutive_failures: int = 200,
        split_samples_by_rank: bool = False,
        shards_key: str = "data.train_shards",
    ) -> None:
        super().__init__()
        self.shards_key = shards_key
        self.urls = list_shards(shards, key=shards_key)
        self.num_frames = int(num_frames)
        self.frame_stride = frame_stride if isinstance(frame_stride, int) else [int(s) for s in frame_stride]
        self.resolution = (int(resolution[0]), int(resolution[1]))
        self.shuffle_buffer = int(shuffle_buffer)
        self.resampled = resampled
        self.random_start = random_start
        self.seed = int(seed)
        self.max_consecutive_failures = int(max_consecutive_failures)
        self.split_samples_by_rank = split_samples_by_rank
        self.epoch = 0
        self.resume_positions: dict[int, int] = {}
        self.health = DataHealth()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # -- stream -----------------------------------------------------------------------------------
    def _shard_stream(self, rng: random.Random) -> Iterator[str]:
        if self.resampled:
            while True:
                yield rng.choice(self.urls)
        order = list(self.urls)
        if self.shuffle_buffer > 0:  # same order on every rank/worker, then split
            random.Random(f"{self.seed}-{self.epoch}").shuffle(order)
        # evaluation streams split samples (not shards) across ranks, so that every rank gets
        # the same number of clips even with fewer shards than ranks
        yield from wds.split_by_worker(order if self.split_samples_by_rank else wds.split_by_node(order))

    def _tar_samples(self, rng: random.Random) -> Iterator[dict[str, Any]]:
        empty_in_a_row = 0
        for url in self._shard_stream(rng):
            produced = False
            for sample in shard_samples(url, self.health):
                produced = True
                empty_in_a_row = 0
                yield sample
            if not produced:
                empty_in_a_row += 1
                if self.resampled and empty_in_a_row >= max(
                    self.max_consecutive_failures, 2 * len(self.urls)
                ):
                    raise RuntimeError(
                        f"{empty_in_a_row} shards in a row gave no sample ({self.health}); check "
                        f"{self.shards_key} ({self.urls[0]} ...): are these readable webdataset tar files?"
                    )

    def raw_samples(self) -> Iterator[dict[str, Any]]:
        rank, world, worker, num_workers = pytorch_worker_info()
        rng = random.Random(f"{self.seed}-{self.epoch}-{rank}-{worker}")
        samples = self._tar_samples(rng)
        if self.shuffle_buffer > 0:
            samples = wds.filters.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer // 2, rng=rng)(
                samples
            )
        return samples

    def _caption(self, sample: dict[str, Any]) -> str:
        raw = sample.get("txt")
        if raw is None:
            self.health.add("missing_caption")
            return ""
        if not isinstance(raw, (bytes, bytearray)):
            return str(raw).strip()
        try:
            return raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            self.health.add("bad_caption")
            log.warning(
                "caption of %s (%s) is not UTF-8 (%s): decoded with replacement characters",
                sample.get("__key__"),
                sample.get("__url__"),
                e,
            )
            return raw.decode("utf-8", errors="replace").strip()

    def _meta(self, sample: dict[str, Any]) -> dict[str, Any]:
        if "json" not in sample:
            return {}
        try:
            meta = json.loads(sample["json"])
            if not isinstance(meta, dict):
                raise ValueError(f"expected a JSON object, got {type(meta).__name__}")
            return meta
        except (ValueError, UnicodeDecodeError) as e:
            self.health.add("bad_meta")
            log.warning("metadata of %s (%s) ignored: %s", sample.get("__key__"), sample.get("__url__"), e)
            return {}

    def decode(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any] | None:
        """Decode one raw sample; ``None`` if it is too short. Raises ``VideoDecodeError`` if corrupt."""
        data = sample.get("mp4")
        if data is None:
            raise VideoDecodeError(f"sample {sample.get('__key__')} has no .mp4 member")
        reader = open_video(data)
        picked = sample_frame_indices(len(reader), self.num_frames, self.frame_stride, rng, self.random_start)
        if picked is None:
            return None
        indices, stride = picked
        frames = reader.get(indices)
        if reader.decoder != "decord":
            self.health.add("decoded_by_pyav")
        video = video_from_uint8(frames, self.resolution)
        meta = self._meta(sample)
        try:
            fps = float(meta.get("fps") or reader.fps)
        except (TypeError, ValueError):
            fps = reader.fps
        return {
            "video": video,
            "caption": self._caption(sample),
            "fps": fps,
            "frame_stride": stride,
            "key": sample["__key__"],
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world, worker, num_workers = pytorch_worker_info()
        stream = f"{self.seed}-{self.epoch}-{rank}-{worker}"
        skip = self.resume_positions.get(worker, 0)
        self.health = DataHealth()  # counts of this epoch's stream in this worker
        consecutive = 0
        for raw_index, sample in enumerate(self.raw_samples()):
            if self.split_samples_by_rank and raw_index % world != rank:
                continue
            if raw_index < skip:  # fast-forward after resume, without decoding
                continue
            rng = random.Random(f"{stream}-frames-{raw_index}")  # per-sample: independent of skips
            try:
                out = self.decode(sample, rng)
            except VideoDecodeError as e:
                self.health.add("corrupt")
                log.warning(
                    "skipping unreadable video %s (%s): %s", sample.get("__key__"), sample.get("__url__"), e
                )
                out = None
            else:
                if out is None:
                    self.health.add("short")
                    log.warning(
                        "skipping too-short video %s (%s)", sample.get("__key__"), sample.get("__url__")
                    )
            if out is None:
                consecutive += 1
                if consecutive >= self.max_consecutive_failures:
                    raise RuntimeError(
                        f"{consecutive} videos in a row could not be used (last: {sample.get('__key__')} in "
                        f"{sample.get('__url__')}; {self.health}); check {self.shards_key} "
                        f"({self.urls[0]} ...) and data.num_frames / data.frame_stride"
                    )
                continue
            consecutive = 0
            out.update(worker=worker, raw_index=raw_index, health=self.health.snapshot())
            yield out
