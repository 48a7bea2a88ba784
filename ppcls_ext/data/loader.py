"""DataLoaders from a PaddleClas `DataLoader.<Train|Eval>` section: dataset, sampler, workers."""
from __future__ import annotations

import atexit
import contextlib
import logging
import random
import traceback
import weakref
from typing import Any, Dict, Mapping, Optional

import numpy as np
import paddle
from paddle.io import DataLoader, DistributedBatchSampler, get_worker_info
from paddle.io.dataloader.collate import default_collate_fn

from ..config import ConfigError, check_values, integer, section
from .batch_ops import build_batch_ops
from .dataset import DataError, FailedSample, ImageNetDataset, IndexedDataset
from .device_normalize import ATTRIBUTE as DEVICE_NORMALIZE
from .device_normalize import split_normalization
from .image_folder import ImageFolderDataset  # noqa: F401 (registered in DATASETS as it is imported)
from .registries import DATASETS
from .transforms import build_transforms

SAMPLERS = ("DistributedBatchSampler", "BatchSampler")
#: PaddleClas's loader keys, and paddle.io.DataLoader's prefetch depth
LOADER_KEYS = {"num_workers", "use_shared_memory", "prefetch_factor", "normalize_on_device"}
logger = logging.getLogger("ppcls_ext")


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


_DATA_ERROR = "data_error"  # the key of a batch that carries a worker's DataError message (see FailedSample)
_WORKER_ERROR = "worker_error"  # ... or the traceback of another exception in the worker's batch operators


def _as_bytes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


def _text(array) -> str:
    return bytes(array.numpy()).decode("utf-8")


class _Collate:
    """Applies the batch operators (mixup, cutmix) to the list of samples, then stacks them. A batch that
    cannot be built (a FailedSample in it, images of different sizes, a batch operator's ValueError) is a
    DataError; in a DataLoader worker it becomes {"data_error": the message as UTF-8 bytes}, which
    WorkerLoader raises (Paddle's loader would fail or wait on a worker's exception instead)."""

    def __init__(self, batch_ops, where: str = "DataLoader"):
        self.batch_ops = batch_ops
        self.where = where

    def __call__(self, samples):
        message = self._problem(samples)
        if message is None:
            try:
                return default_collate_fn(self.batch_ops(samples) if self.batch_ops else samples)
            except ValueError as error:  # a batch operator refusing the batch (DataError is a ValueError)
                message = f"{self.where}.dataset.batch_transform_ops: {error}"
            except Exception:  # a bug: the main process raises it with this traceback
                if get_worker_info() is None:
                    raise
                return {_WORKER_ERROR: _as_bytes(traceback.format_exc())}
        if get_worker_info() is None:
            raise DataError(message)
        return {_DATA_ERROR: _as_bytes(message)}

    def _problem(self, samples) -> Optional[str]:
        failed = next((sample for sample in samples if isinstance(sample, FailedSample)), None)
        if failed is not None:
            return failed.message
        shapes = sorted({tuple(np.shape(sample[0])) for sample in samples})
        if len(shapes) > 1:
            return (f"{self.where}.dataset.transform_ops give images of different sizes in one batch "
                    f"({', '.join('x'.join(map(str, shape)) for shape in shapes[:4])}): end them with a fixed-size op "
                    "such as ResizeImage (size) or CropImage")
        return None


class WorkerLoader(DataLoader):
    """Paddle's multi-process DataLoader, raising in the main process the DataError that a worker
    returned as a FailedSample batch, and stopping its workers when iteration ends early."""

    def __iter__(self):
        batches = super().__iter__()
        _LIVE_ITERATORS.add(batches)
        try:
            for batch in batches:
                if isinstance(batch, dict) and _DATA_ERROR in batch:
                    raise DataError(_text(batch[_DATA_ERROR]))
                if isinstance(batch, dict) and _WORKER_ERROR in batch:
                    raise RuntimeError("a DataLoader worker failed in the batch operators:\n"
                                       + _text(batch[_WORKER_ERROR]))
                yield batch
        except BaseException:  # an error, an interrupt, or a consumer that stopped early: no worker is left running
            _stop_workers(batches)
            raise


_LIVE_ITERATORS: "weakref.WeakSet" = weakref.WeakSet()  # multi-process iterators, for the clean-up at exit


@atexit.register
def _stop_live_workers() -> None:
    """Stop the workers of iterators that a run left mid-epoch (stopped by an error or a signal while its
    generator was still referenced) before the interpreter shuts down: Paddle's own clean-up in the
    iterator's `__del__` would run during finalisation, where it can wait for ever on a queue thread it
    starts (seen after SIGTERM)."""
    for batches in list(_LIVE_ITERATORS):
        _stop_workers(batches)


def _stop_workers(batches) -> None:
    """Stop the worker processes of a multi-process iterator left mid-epoch. Its reader thread holds a
    reference to it, so it is never collected before the process exits, and paddle.io has no public
    way to close it: this calls `_DataLoaderIterMultiProcess._try_shutdown_all` (paddle/io/dataloader/
    dataloader_iter.py, Paddle 3.3.1), which its `__del__` calls (tested: no worker outlives the error)."""
    shutdown = getattr(batches, "_try_shutdown_all", None)
    if shutdown is not None:
        # workers already gone (a signal to the whole process group) make it fail: what matters then is the
        # error on its way out, or the end of the process, not a clean-up that found them gone
        with contextlib.suppress(Exception):
            shutdown()


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
    """The dataset of `DataLoader.<mode>.dataset` (its batch_transform_ops are the loader's)."""
    if not isinstance(dataset_cfg, Mapping):
        raise ConfigError(f"{where}: expected a mapping with name: <dataset> and its settings, got {dataset_cfg!r}")
    args = {key: value for key, value in dataset_cfg.items() if key not in ("transform_ops", "batch_transform_ops")}
    transforms = build_transforms(dataset_cfg.get("transform_ops") or [], f"{where}.transform_ops")
    return DATASETS.build(args, where, transform_ops=transforms, skip_broken=skip_broken)


def build_dataloader(
    config: Mapping[str, Any],
    mode: str,
    class_num: int,
    seeder: Optional[WorkerSeeder] = None,
    indexed: bool = False,
    unlabeled: bool = False,
):
    """The loader of `DataLoader.<mode>`; sharded across ranks by DistributedBatchSampler. With
    `indexed`, samples carry their dataset index (see IndexedDataset); with `unlabeled`, images without a
    label (label -1) are accepted (see `ImageNetDataset.check_labels`)."""
    where = f"DataLoader.{mode}"
    cfg: Dict[str, Any] = section(config, where)
    dataset_cfg = section(cfg, "dataset")
    dataset = build_dataset(dataset_cfg, f"{where}.dataset", skip_broken=mode == "Train")
    if unlabeled:
        dataset.check_labels(class_num, unlabeled=True)
    else:
        dataset.check_labels(class_num)
    batch_ops = build_batch_ops(dataset_cfg.get("batch_transform_ops") or [], class_num, f"{where}.dataset.batch_transform_ops")
    sampler_cfg = dict(section(cfg, "sampler"))
    sampler_name = sampler_cfg.pop("name", "DistributedBatchSampler")
    if sampler_name not in SAMPLERS:
        raise ConfigError(f"{where}.sampler: unknown sampler {sampler_name!r}; valid: {', '.join(SAMPLERS)}")
    batch_size = integer(1, expected="a positive integer")(sampler_cfg.pop("batch_size", None), f"{where}.sampler.batch_size")
    source = IndexedDataset(dataset) if indexed else dataset
    sampler = DistributedBatchSampler(source, batch_size=batch_size, shuffle=bool(sampler_cfg.pop("shuffle", False)),
                                      drop_last=bool(sampler_cfg.pop("drop_last", False)))
    if sampler_cfg:
        raise ConfigError(f"{where}.sampler: unknown key(s) {sorted(sampler_cfg)}; known: name, batch_size, shuffle, drop_last")
    loader_cfg = dict(cfg.get("loader") or {})
    unknown = set(loader_cfg) - LOADER_KEYS
    if unknown:
        raise ConfigError(f"{where}.loader: unknown key(s) {sorted(unknown)}; known: {', '.join(sorted(LOADER_KEYS))}")
    check_values(loader_cfg, {"num_workers": integer(0), "prefetch_factor": integer(1)}, f"{where}.loader")
    normalizer = None
    if loader_cfg.get("normalize_on_device"):  # uint8 batches; the loop normalises them (see device_normalize)
        dataset.transform, normalizer = split_normalization(dataset.transform, f"{where}.dataset.transform_ops")
    num_workers = loader_cfg.get("num_workers", 0)
    if num_workers == 0:
        if mode == "Train" and paddle.device.get_device().startswith("gpu"):
            logger.warning("%s.loader.num_workers is 0: batches are decoded in the training process and copied to the "
                           "GPU without prefetching; set num_workers (e.g. 8) to keep the GPU busy", where)
        loader = InlineLoader(source, sampler, _Collate(batch_ops, where))
    else:
        # on a GPU, paddle.io's buffered reader (use_buffer_reader, on by default) stages `prefetch_factor`
        # batches per device in pinned memory (paddle.io's default in dygraph) and copies them asynchronously
        loader = WorkerLoader(
            source,
            batch_sampler=sampler,
            num_workers=num_workers,
            use_shared_memory=bool(loader_cfg.get("use_shared_memory", True)),
            prefetch_factor=loader_cfg.get("prefetch_factor", 2),
            collate_fn=_Collate(batch_ops, where),
            worker_init_fn=seeder,
        )
    setattr(loader, DEVICE_NORMALIZE, normalizer)
    return loader


def train_pipeline(loader):
    """(transform Compose, batch operators or None) of a loader from `build_dataloader`, for schedules
    that change augmentation between epochs."""
    dataset = loader.dataset.dataset if isinstance(loader.dataset, IndexedDataset) else loader.dataset
    return dataset.transform, loader.collate_fn.batch_ops
