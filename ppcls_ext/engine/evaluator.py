"""Evaluation over a whole eval set: per-sample losses and top-k hits kept on the device, gathered across
ranks once, each image counted once, logged in PaddleClas's format."""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

import numpy as np
import paddle
import paddle.distributed as dist

from ..data.dataset import DataError
from ..data.device_normalize import batch_normalizer
from ..errors import NonFiniteError
from .amp import AmpPolicy
from .log import AverageMeter, epoch_line, logger
from .rank_agreement import agreed_batches


class Evaluator:
    """Scores a network on `loader` (which yields images, labels and sample indices) with `loss`
    (per-sample, reduction "none") and `metric` (a TopkAcc)."""

    def __init__(self, loader: Any, loss: Any, metric: Any, amp: AmpPolicy, world_size: int, print_step: int):
        self.loader, self.loss, self.metric, self.amp = loader, loss, metric, amp
        self.world_size, self.print_step = world_size, print_step

    @paddle.no_grad()
    def evaluate(self, net: paddle.nn.Layer, epoch: int = 0, label: str = "Eval") -> Dict[str, float]:
        """Loss and top-k over the whole eval set, each image counted once across ranks (the sampler's
        padding is dropped by sample index). Per-sample results stay on the device until the end. Model
        outputs holding NaN/Inf stop with an error instead of scoring them."""
        net.eval()
        rows: List[paddle.Tensor] = []  # per batch: [N, 1 + losses + top-k + 1] = index, losses, hits, finite
        times = {"batch_cost": AverageMeter(), "reader_cost": AverageMeter()}
        loss_names: List[str] = []
        tic = time.time()
        try:
            for iteration, (images, labels, index) in enumerate(agreed_batches(self.loader, self.world_size)):
                images = batch_normalizer(self.loader)(images)  # loader.normalize_on_device: uint8 batches
                times["reader_cost"].update(time.time() - tic)
                loss_names = self._evaluate_batch(net, images, labels, index, rows)
                times["batch_cost"].update(time.time() - tic)
                if iteration % self.print_step == 0:
                    logger.info("[%s][Epoch %d][Iter: %d/%d]batch_cost: %.5fs, reader_cost: %.5f, ips: %.5f images/sec",
                                label, epoch, iteration, len(self.loader), times["batch_cost"].avg,
                                times["reader_cost"].avg, images.shape[0] / max(times["batch_cost"].avg, 1e-12))
                tic = time.time()
        except DataError as error:
            self._stop_on_any_rank_failure(str(error))
            raise
        self._stop_on_any_rank_failure(None)
        table = self._gather(paddle.concat(rows))
        _, first = np.unique(table[:, 0].astype("int64"), return_index=True)
        table = table[first, 1:]
        broken = int((table[:, -1] == 0).sum())
        if broken:
            raise NonFiniteError(f"[{label}] epoch {epoch}: the model's outputs hold NaN or Inf for {broken} of {len(first)} "
                                 f"images, so no scores are reported" + ("; float16 evaluation may overflow: try "
                                 "AMP.use_fp16_test: False" if self.amp.eval_autocast and self.amp.level == "O1" else ""))
        names = loss_names + list(self.metric.names())
        result = {name: float(v) for name, v in zip(names, table[:, :-1].astype("float32").mean(axis=0))}
        logger.info(epoch_line(label, epoch, None, result) + f", images: {len(first)}")
        return result

    def _evaluate_batch(self, net: paddle.nn.Layer, images, labels, index, rows: List[paddle.Tensor]) -> List[str]:
        """Append one batch's rows (sample index, per-sample losses, top-k hits, whether the output is
        finite) to `rows`; returns the loss names."""
        with self.amp.evaluation_autocast():
            logits = net(images).astype("float32")
        per_sample = self.loss(logits, labels)
        rows.append(paddle.concat([index.reshape([-1, 1]).astype("float64")]
                                  + [per_sample[k].reshape([-1, 1]).astype("float64") for k in per_sample]
                                  + [self.metric.hits(logits, labels).astype("float64"),
                                     paddle.isfinite(logits).all(axis=-1, keepdim=True).astype("float64")], axis=1))
        return list(per_sample)

    def _stop_on_any_rank_failure(self, message: Optional[str]) -> None:
        """Distributed evaluation: every rank says whether it could read its share of the data (one
        collective per evaluation, not per batch), so that a rank's unreadable image stops every process
        with the same one-line error instead of leaving the others waiting in the gather until gloo/NCCL
        times out."""
        if self.world_size == 1:
            return
        messages: List[Optional[str]] = []
        dist.all_gather_object(messages, message)
        failed = [(rank, text) for rank, text in enumerate(messages) if text]
        if failed and message is None:
            raise DataError(f"{failed[0][1]} (read by process {failed[0][0]})")

    def _gather(self, rows: paddle.Tensor) -> np.ndarray:
        """Every rank's rows, concatenated, on the host; ranks hold equally many samples (padded sampler)."""
        if self.world_size > 1:
            gathered: List[paddle.Tensor] = []
            dist.all_gather(gathered, rows)
            rows = paddle.concat(gathered)
        return rows.numpy()
