"""Streaming video clips from WebVid-style webdataset shards, decoded with decord.

Pipeline per DataLoader worker (all of it runs inside the worker, so each worker opens its own
decord readers):

    shard list (resolved and checked up front) --(split by node, split by worker; or resampled
      with replacement)--> tar samples --(shuffle buffer, seeded per epoch/rank/worker)-->
      decode only the needed frames (decord; PyAV for files decord rejects)
      --> resize + centre-crop in uint8 --> {video: f c h w float in [-1, 1], caption, fps,
      frame_stride, key}

Nothing bad in the data stops a run or disappears silently: corrupt, truncated or too-short
videos, unreadable or truncated shards, duplicate keys, malformed metadata, non-UTF-8 or missing
captions are skipped or repaired and counted (:mod:`i2vlab.data.health`). The counts travel with
every batch; the data module sums them over workers and epochs, keeps the totals in the
checkpoint, and the training module logs them summed over ranks (``data/<kind>``). A stream that
yields nothing (every shard unreadable, every video unusable) raises after
``max_consecutive_failures``; a worker that produces nothing for ``timeout_s`` fails the run.

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


class VideoDataModule(pl.LightningDataModule):
    """LightningDataModule over train/val shard sets; see ``VideoShardDataset`` for the options.

    Batches: ``video`` (b f c h w, [-1, 1]), ``caption`` (list[str]), ``fps`` (b,), ``frame_stride`` (b,),
    ``key`` (list[str]), plus bookkeeping (``worker``, ``raw_index``, ``skipped_corrupt``, ``skipped_short``).
    """

    def __init__(
        self,
        train_shards: str | Sequence[str],
        val_shards: str | Sequence[str] | None = None,
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
        timeout_s: float = 600.0,
        max_consecutive_failures: int = 200,
        toy: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.timeout_s = float(timeout_s)
        self.max_consecutive_failures = int(max_consecutive_failures)
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
        # data-health counts: totals of finished epochs (and of the run before a resume) + the
        # latest running counts of each worker in the current epoch
        self.health_base = DataHealth()
        self.health_workers: dict[int, dict[str, int]] = {}
        self.train_dataset: VideoShardDataset | None = None

    def prepare_data(self) -> None:
        """With ``toy`` set (the ``data=toy`` config), build the synthetic shards if they are missing."""
        from pathlib import Path

        if (
            not self.toy
            or not isinstance(self.train_shards, str)
            or any(Path(self.train_shards).glob("*.tar"))
        ):
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
            max_consecutive_failures=self.max_consecutive_failures,
            shards_key="data.train_shards",
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
                max_consecutive_failures=self.max_consecutive_failures,
                split_samples_by_rank=True,
                shards_key="data.val_shards",
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
            # a worker that produces nothing for this long fails the run instead of hanging it
            timeout=self.timeout_s if workers > 0 else 0,
            worker_init_fn=_worker_init,
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
        self._start_epoch(epoch)
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
            self._start_epoch(int(trainer.current_epoch))
            workers = batch["worker"].tolist()
            for w, i in zip(workers, batch["raw_index"].tolist()):
                self.positions[w] = max(self.positions.get(w, 0), i + 1)
            health = batch.get("health") or {}
            for j, w in enumerate(workers):  # running counts only grow within a worker's epoch
                seen = self.health_workers.setdefault(w, {})
                for k, v in health.items():
                    seen[k] = max(seen.get(k, 0), int(v[j]))
        return batch

    def _start_epoch(self, epoch: int) -> None:
        """A new epoch: fold the workers' counts into the totals and forget the positions."""
        if epoch != self.positions_epoch:
            self.health_base = self.health_totals()
            self.health_workers = {}
            self.positions, self.positions_epoch = {}, epoch

    def health_totals(self) -> DataHealth:
        """What this rank's training stream skipped, repaired or could not read so far (all epochs,
        all workers, including the run before a resume)."""
        total = self.health_base
        for counts in self.health_workers.values():
            total = total + counts
        return total

    def state_dict(self) -> dict[str, Any]:
        return {
            "positions": dict(self.positions),
            "epoch": self.positions_epoch,
            "health": self.health_totals().snapshot(),
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
            self.health_base = self._base_for_this_rank(state.get("health"))
            return
        self.positions = {int(k): int(v) for k, v in state.get("positions", {}).items()}
        self.positions_epoch = int(state.get("epoch", 0))
        # the resumed workers fast-forward without decoding, so they count only what follows; the
        # checkpoint holds the totals of all ranks, which rank 0 carries on
        self.health_base, self.health_workers = self._base_for_this_rank(state.get("health")), {}

    def _base_for_this_rank(self, totals: Mapping[str, int] | None) -> DataHealth:
        trainer = getattr(self, "trainer", None)
        rank = int(getattr(trainer, "global_rank", 0) or 0) if trainer is not None else 0
        return DataHealth(totals) if rank == 0 else DataHealth()


def _worker_init(worker_id: int) -> None:
    """One intra-op thread per data-loader worker: decoding runs in parallel across workers."""
    torch.set_num_threads(1)


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
