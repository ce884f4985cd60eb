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

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset
from webdataset.utils import pytorch_worker_info

from i2vlab.data.health import DataHealth
from i2vlab.data.stream import VideoShardDataset  # noqa: F401  (part of this module's interface)

log = logging.getLogger(__name__)


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
