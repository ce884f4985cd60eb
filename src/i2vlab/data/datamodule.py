"""Streaming video clips from WebVid-style webdataset shards, decoded with decord.

Pipeline per DataLoader worker (all of it runs inside the worker, so each worker opens its own
decord readers):

    shard list --(split by node, split by worker; or resampled with replacement)--> tar samples
      --(shuffle buffer, seeded per epoch/rank/worker)--> decode only the needed frames (decord)
      --> resize + centre-crop --> {video: f c h w in [-1, 1], caption, fps, frame_stride, key}

A corrupt, truncated or too-short video is skipped and counted; the counts travel with every
batch (``skipped_corrupt``, ``skipped_short``) and are logged by the training module.

Resume: every sample carries the worker id and its position in that worker's (deterministic)
raw stream. The datamodule records, from the batches the trainer actually consumed, how far each
worker got, and saves that in the checkpoint (``state_dict``); a resumed run fast-forwards each
worker past those raw samples without decoding them. This is exact for the same seed, number of
workers and world size.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset
from webdataset.utils import pytorch_worker_info

from i2vlab.data.shards import list_shards
from i2vlab.data.transforms import resize_center_crop, sample_frame_indices
from i2vlab.utils.video_io import VideoDecodeError, from_uint8_frames, open_video, read_frames

log = logging.getLogger(__name__)


class VideoShardDataset(IterableDataset):
    """Iterable over clips from webdataset shards. See the module docstring for the pipeline.

    Args:
        shards: folder of ``*.tar``, one tar, or a brace pattern (``data/shard-{000000..000009}.tar``).
        num_frames: frames per clip.
        frame_stride: fixed int, or ``[lo, hi]`` for a random stride per clip (returned in the sample).
        resolution: ``(h, w)`` after short-side resize and centre crop.
        shuffle_buffer: webdataset shuffle buffer size (0 = no shuffling, shards in order).
        resampled: draw shards with replacement forever (training); else one pass over the shards.
        random_start: random clip start (training) or always frame 0 (evaluation).
        max_consecutive_failures: raise (with a message) after this many unreadable videos in a row.
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
    ) -> None:
        super().__init__()
        self.urls = list(shards) if not isinstance(shards, str) else list_shards(shards)
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

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # -- stream -----------------------------------------------------------------------------------
    def _shard_stream(self, rng: random.Random) -> Iterator[dict[str, str]]:
        if self.resampled:
            while True:
                yield {"url": rng.choice(self.urls)}
        order = list(self.urls)
        if self.shuffle_buffer > 0:  # same order on every rank/worker, then split
            random.Random(f"{self.seed}-{self.epoch}").shuffle(order)
        # evaluation streams split samples (not shards) across ranks, so that every rank gets
        # the same number of clips even with fewer shards than ranks
        urls = wds.split_by_worker(order if self.split_samples_by_rank else wds.split_by_node(order))
        yield from ({"url": u} for u in urls)

    def raw_samples(self) -> Iterator[dict[str, Any]]:
        rank, world, worker, num_workers = pytorch_worker_info()
        rng = random.Random(f"{self.seed}-{self.epoch}-{rank}-{worker}")
        samples = wds.tarfile_to_samples(handler=wds.warn_and_continue)(self._shard_stream(rng))
        if self.shuffle_buffer > 0:
            samples = wds.filters._shuffle(
                samples, bufsize=self.shuffle_buffer, initial=self.shuffle_buffer // 2, rng=rng
            )
        return samples

    def decode(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any] | None:
        """Decode one raw sample; ``None`` if it is too short. Raises ``VideoDecodeError`` if corrupt."""
        data = sample.get("mp4")
        if data is None:
            raise VideoDecodeError(f"sample {sample.get('__key__')} has no .mp4 member")
        meta = json.loads(sample["json"]) if "json" in sample else {}
        reader = open_video(data)
        picked = sample_frame_indices(len(reader), self.num_frames, self.frame_stride, rng, self.random_start)
        if picked is None:
            return None
        indices, stride = picked
        frames = from_uint8_frames(read_frames(reader, indices))
        video = resize_center_crop(frames, self.resolution).contiguous()
        caption = sample.get("txt", b"")
        caption = caption.decode("utf-8") if isinstance(caption, bytes) else str(caption)
        fps = float(meta.get("fps") or reader.get_avg_fps())
        return {
            "video": video,
            "caption": caption.strip(),
            "fps": fps,
            "frame_stride": stride,
            "key": sample["__key__"],
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world, worker, num_workers = pytorch_worker_info()
        stream = f"{self.seed}-{self.epoch}-{rank}-{worker}"
        skip = self.resume_positions.get(worker, 0)
        corrupt = short = consecutive = 0
        for raw_index, sample in enumerate(self.raw_samples()):
            if self.split_samples_by_rank and raw_index % world != rank:
                continue
            if raw_index < skip:  # fast-forward after resume, without decoding
                continue
            rng = random.Random(f"{stream}-frames-{raw_index}")  # per-sample: independent of skips
            try:
                out = self.decode(sample, rng)
            except VideoDecodeError as e:
                corrupt += 1
                consecutive += 1
                log.warning("skipping unreadable video %s: %s", sample.get("__key__"), e)
                out = None
            else:
                if out is None:
                    short += 1
                    consecutive += 1
                    log.warning("skipping too-short video %s", sample.get("__key__"))
            if out is None:
                if consecutive >= self.max_consecutive_failures:
                    raise RuntimeError(
                        f"{consecutive} videos in a row could not be used (last: {sample.get('__key__')}); "
                        f"check the shards ({self.urls[0]} ...) and data.num_frames / data.frame_stride"
                    )
                continue
            consecutive = 0
            out.update(worker=worker, raw_index=raw_index, skipped_corrupt=corrupt, skipped_short=short)
            yield out


class VideoDataModule(pl.LightningDataModule):
    """LightningDataModule over train/val shard sets; see ``VideoShardDataset`` for the options.

    Batches: ``video`` (b f c h w, [-1, 1]), ``caption`` (list[str]), ``fps`` (b,), ``frame_stride`` (b,),
    ``key`` (list[str]), plus bookkeeping (``worker``, ``raw_index``, ``skipped_corrupt``, ``skipped_short``).
    """

    def __init__(
        self,
        train_shards: str,
        val_shards: str | None = None,
        batch_size: int = 1,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        num_frames: int = 16,
        frame_stride: int | Sequence[int] = 1,
        val_frame_stride: int | None = None,
        resolution: Sequence[int] = (256, 256),
        shuffle_buffer: int = 100,
        epoch_length: int = 1000,
        val_num_samples: int = 8,
        seed: int = 0,
        pin_memory: bool = True,
        toy: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.toy = dict(toy) if toy else None
        self.train_shards, self.val_shards = train_shards, val_shards
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers = num_workers
        self.num_frames, self.frame_stride = num_frames, frame_stride
        self.val_frame_stride = val_frame_stride
        self.resolution, self.shuffle_buffer = resolution, shuffle_buffer
        self.epoch_length, self.val_num_samples = epoch_length, val_num_samples
        self.seed, self.pin_memory = seed, pin_memory
        self.positions: dict[int, int] = {}  # worker id -> raw samples consumed in ``positions_epoch``
        self.positions_epoch = 0
        self.skipped = {"corrupt": 0, "short": 0}
        self.train_dataset: VideoShardDataset | None = None

    def prepare_data(self) -> None:
        """With ``toy`` set (the ``data=toy`` config), build the synthetic shards if they are missing."""
        from pathlib import Path

        if not self.toy or any(Path(self.train_shards).glob("*.tar")):
            return
        from i2vlab.data.toy import write_toy_shards

        root = Path(self.train_shards).parent
        log.info("building toy shards in %s", root)
        write_toy_shards(root, **self.toy)

    def setup(self, stage: str | None = None) -> None:
        self.train_dataset = VideoShardDataset(
            self.train_shards,
            self.num_frames,
            self.frame_stride,
            self.resolution,
            self.shuffle_buffer,
            resampled=True,
            random_start=True,
            seed=self.seed,
        )
        if self.val_shards:
            stride = self.val_frame_stride
            if stride is None:
                stride = (
                    self.frame_stride if isinstance(self.frame_stride, int) else int(self.frame_stride[0])
                )
            self.val_dataset = VideoShardDataset(
                self.val_shards,
                self.num_frames,
                stride,
                self.resolution,
                shuffle_buffer=0,
                resampled=False,
                random_start=False,
                seed=self.seed,
                split_samples_by_rank=True,
            )

    def _loader(
        self, ds: IterableDataset, batch_size: int, workers: int, cls: type = DataLoader
    ) -> DataLoader:
        return cls(
            ds,
            batch_size=batch_size,
            num_workers=workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=False,
            prefetch_factor=2 if workers > 0 else None,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        assert self.train_dataset is not None, "call setup() first"
        loader = self._loader(
            _Limited(self.train_dataset, self.epoch_length),
            self.batch_size,
            self.num_workers,
            cls=_EpochDataLoader,
        )
        loader.datamodule = self
        return loader

    def current_epoch(self) -> int:
        trainer = getattr(self, "_trainer", None) or getattr(self, "trainer", None)
        return int(trainer.current_epoch) if trainer is not None else self.positions_epoch

    def prepare_epoch(self, epoch: int) -> None:
        """Called as each training epoch's iterator is created: set the epoch's seed and, when resuming
        inside that epoch, the per-worker positions to fast-forward past."""
        assert self.train_dataset is not None
        if epoch != self.positions_epoch:
            self.positions, self.positions_epoch = {}, epoch
        self.train_dataset.set_epoch(epoch)
        self.train_dataset.resume_positions = dict(self.positions)

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_shards:
            return []
        # the same number of clips on every rank (uneven validation would deadlock DDP's metric sync)
        _, world, _, _ = pytorch_worker_info()
        ds = _Limited(self.val_dataset, max(1, self.val_num_samples // world), split_across_workers=False)
        return self._loader(ds, self.val_batch_size, 0)

    # -- resume bookkeeping -----------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.training and isinstance(batch, dict) and "raw_index" in batch:
            if trainer.current_epoch != self.positions_epoch:
                self.positions, self.positions_epoch = {}, int(trainer.current_epoch)
            for w, i in zip(batch["worker"].tolist(), batch["raw_index"].tolist()):
                self.positions[w] = max(self.positions.get(w, 0), i + 1)
            self.skipped["corrupt"] = max(self.skipped["corrupt"], int(batch["skipped_corrupt"].max()))
            self.skipped["short"] = max(self.skipped["short"], int(batch["skipped_short"].max()))
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "positions": dict(self.positions),
            "epoch": self.positions_epoch,
            "skipped": dict(self.skipped),
            "seed": self.seed,
            "num_workers": self.num_workers,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (
            state.get("num_workers", self.num_workers) != self.num_workers
            or state.get("seed", self.seed) != self.seed
        ):
            log.warning(
                "data.num_workers or data.seed changed since the checkpoint: the data stream restarts"
            )
            return
        self.positions = {int(k): int(v) for k, v in state.get("positions", {}).items()}
        self.positions_epoch = int(state.get("epoch", 0))
        self.skipped = dict(state.get("skipped", self.skipped))


class _EpochDataLoader(DataLoader):
    """A DataLoader that tells its datamodule each time a new epoch's iterator is made."""

    datamodule: VideoDataModule

    def __iter__(self):
        self.datamodule.prepare_epoch(self.datamodule.current_epoch())
        return super().__iter__()


class _Limited(IterableDataset):
    """Caps a stream at ``n`` samples per epoch in total (divided among workers for training)."""

    def __init__(self, ds: IterableDataset, n: int, split_across_workers: bool = True) -> None:
        self.ds, self.n, self.split = ds, int(n), split_across_workers

    def __iter__(self):
        _, _, worker, num_workers = pytorch_worker_info()
        n = self.n
        if self.split and num_workers > 1:
            n = self.n // num_workers + (1 if worker < self.n % num_workers else 0)
        for i, s in enumerate(self.ds):
            if i >= n:
                break
            yield s

    def __len__(self) -> int:
        return self.n
