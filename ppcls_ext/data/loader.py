"""DataLoaders from a PaddleClas `DataLoader.<Train|Eval>` section: dataset, sampler, workers."""
from __future__ import annotations

import random
from typing import Any, Dict, Mapping, Optional

import numpy as np
import paddle
from paddle.io import DataLoader, DistributedBatchSampler
from paddle.io.dataloader.collate import default_collate_fn

from ..config import ConfigError, build_from_registry, section
from .batch_ops import build_batch_ops
from .dataset import ImageNetDataset, IndexedDataset
from .device_normalize import ATTRIBUTE as DEVICE_NORMALIZE
from .device_normalize import split_normalization
from .transforms import build_transforms

DATASETS = {"ImageNetDataset": ImageNetDataset}
SAMPLERS = ("DistributedBatchSampler", "BatchSampler")


class WorkerSeeder:
    """Seeds `random` and `numpy.random` from (seed, rank, epoch, worker): augmentations differ between
    workers, ranks and epochs, and a run with `Global.seed` repeats exactly, also when resumed at any
    epoch. Workers start afresh every epoch, so the engine sets `epoch` before iterating."""

    def __init__(self, seed: Optional[int], rank: int):
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
        self.rank = rank
        self.epoch = 0

    def derive(self, worker_id: int = 0, stream: int = 0) -> int:
        """A seed for (this rank, this epoch, `worker_id`); `stream` separates independent generators."""
        return int(np.random.SeedSequence([self.seed, self.rank, self.epoch, worker_id, stream]).generate_state(1)[0])

    def __call__(self, worker_id: int = 0) -> None:
        seed = self.derive(worker_id)
        random.seed(seed)
        np.random.seed(seed)


class _Collate:
    """Applies the batch operators (mixup, cutmix) to the list of samples, then stacks them."""

    def __init__(self, batch_ops):
        self.batch_ops = batch_ops

    def __call__(self, samples):
        return default_collate_fn(self.batch_ops(samples) if self.batch_ops else samples)


class InlineLoader:
    """Batches built in the calling thread, for `num_workers: 0`. Paddle's single-process DataLoader
    prefetches in a thread that dies silently when the dataset raises (a broken image) and then waits
    forever; here the error reaches the caller."""

    num_workers = 0

    def __init__(self, dataset, batch_sampler, collate_fn):
        self.dataset, self.batch_sampler, self.collate_fn = dataset, batch_sampler, collate_fn

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        for indices in self.batch_sampler:
            yield [paddle.to_tensor(field) for field in self.collate_fn([self.dataset[i] for i in indices])]


def build_dataset(dataset_cfg: Mapping[str, Any], where: str, skip_broken: bool) -> ImageNetDataset:
    args = dict(dataset_cfg)
    name = args.pop("name", None)
    if name is None:
        raise ConfigError(f"{where}.name is missing (e.g. ImageNetDataset)")
    args.pop("batch_transform_ops", None)
    args["transform_ops"] = build_transforms(args.pop("transform_ops", None) or [], f"{where}.transform_ops")
    if name == "ImageNetDataset":
        args["skip_broken"] = skip_broken
    return build_from_registry("dataset", DATASETS, name, args, where)


def build_dataloader(
    config: Mapping[str, Any],
    mode: str,
    class_num: int,
    seeder: Optional[WorkerSeeder] = None,
    indexed: bool = False,
):
    """The loader of `DataLoader.<mode>`; sharded across ranks by DistributedBatchSampler. With
    `indexed`, samples carry their dataset index (see IndexedDataset)."""
    where = f"DataLoader.{mode}"
    cfg: Dict[str, Any] = section(config, where)
    dataset_cfg = section(cfg, "dataset")
    dataset = build_dataset(dataset_cfg, f"{where}.dataset", skip_broken=mode == "Train")
    dataset.check_labels(class_num)
    batch_ops = build_batch_ops(dataset_cfg.get("batch_transform_ops") or [], class_num, f"{where}.dataset.batch_transform_ops")
    sampler_cfg = dict(section(cfg, "sampler"))
    sampler_name = sampler_cfg.pop("name", "DistributedBatchSampler")
    if sampler_name not in SAMPLERS:
        raise ConfigError(f"{where}.sampler: unknown sampler {sampler_name!r}; valid: {', '.join(SAMPLERS)}")
    batch_size = sampler_cfg.pop("batch_size", None)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"{where}.sampler.batch_size must be a positive integer, got {batch_size!r}")
    source = IndexedDataset(dataset) if indexed else dataset
    sampler = DistributedBatchSampler(source, batch_size=batch_size, shuffle=bool(sampler_cfg.pop("shuffle", False)),
                                      drop_last=bool(sampler_cfg.pop("drop_last", False)))
    if sampler_cfg:
        raise ConfigError(f"{where}.sampler: unknown key(s) {sorted(sampler_cfg)}; known: name, batch_size, shuffle, drop_last")
    loader_cfg = dict(cfg.get("loader") or {})
    normalizer = None
    if loader_cfg.get("normalize_on_device"):  # uint8 batches; the loop normalises them (see device_normalize)
        dataset.transform, normalizer = split_normalization(dataset.transform, f"{where}.dataset.transform_ops")
    num_workers = int(loader_cfg.get("num_workers", 0))
    if num_workers == 0:
        loader = InlineLoader(source, sampler, _Collate(batch_ops))
    else:
        loader = DataLoader(
            source,
            batch_sampler=sampler,
            num_workers=num_workers,
            use_shared_memory=bool(loader_cfg.get("use_shared_memory", True)) and num_workers > 0,
            collate_fn=_Collate(batch_ops),
            worker_init_fn=seeder,
        )
    setattr(loader, DEVICE_NORMALIZE, normalizer)
    return loader


def train_pipeline(loader):
    """(transform Compose, batch operators or None) of a loader from `build_dataloader`, for schedules
    that change augmentation between epochs."""
    dataset = loader.dataset.dataset if isinstance(loader.dataset, IndexedDataset) else loader.dataset
    return dataset.transform, loader.collate_fn.batch_ops
