"""Verify a GPU installation: `python tools/gpu_check.py` on a CUDA build of PaddlePaddle.

For one MicroNet and one EfficientNet it runs: a few AMP O1 and O2 training steps on a fixed batch (loss
finite and decreasing), NCHW vs NHWC training throughput, SyncBatchNorm under `paddle.distributed.launch`
when 2+ GPUs are visible, and export + Paddle Inference on GPU + TensorRT fp32/fp16 (PIR export) and int8
with calibration (legacy export), each against the dygraph model's logits, with latency. It prints one
table and exits 1 if any check failed. On a CPU build it says in one line what it needs and exits 2.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import paddle

from ppcls_ext.registry import create_model, get_model_config
from ppcls_ext.report import markdown_table
from ppcls_ext.timing import time_calls

MODELS = ("MicroNet_M0", "EfficientNetB0")
#: largest max |logit difference| / max |logit| accepted per inference setting (TensorRT fp32 may use TF32)
TOLERANCES = {"paddle-gpu": 1e-3, "trt-fp32": 1e-2, "trt-fp16": 5e-2, "trt-int8": 0.25}
HEADER = ("model", "check", "setting", "result", "measured")


@dataclass
class Row:
    model: str
    check: str
    setting: str
    result: str  # "ok", "FAIL: ..." or "skipped: ..."
    measured: str = ""


def results_table(rows: Sequence[Row]) -> str:
    return markdown_table(HEADER, [(r.model, r.check, r.setting, r.result, r.measured) for r in rows], "lllll")


def exit_status(rows: Sequence[Row]) -> int:
    return 1 if any(row.result.startswith("FAIL") for row in rows) else 0


def what_is_missing() -> Optional[str]:
    """None on a CUDA build with a visible GPU, else the one line saying what the check needs."""
    if not paddle.is_compiled_with_cuda():
        return (f"gpu_check needs a CUDA build of PaddlePaddle (paddlepaddle-gpu) and an NVIDIA GPU; this is the "
                f"CPU build {paddle.__version__}: nothing was checked")
    if paddle.device.cuda.device_count() == 0:
        return "gpu_check needs an NVIDIA GPU: this CUDA build of PaddlePaddle sees none (CUDA_VISIBLE_DEVICES?)"
    return None


def fixed_batch(batch: int, size: int, classes: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, 3, size, size)).astype(np.float32), rng.integers(0, classes, (batch, 1))


def build(name: str, classes: int, seed: int, data_format: str = "NCHW") -> paddle.nn.Layer:
    """`name` without dropout or drop-path (a fixed batch then gives a deterministic loss curve)."""
    paddle.seed(seed)
    options = {"dropout": 0.0}
    if get_model_config(name).family.startswith("EfficientNet"):
        options["drop_path_rate"] = 0.0
    return create_model(name, class_num=classes, data_format=data_format, **options)


def train_steps(model: paddle.nn.Layer, images: np.ndarray, labels: np.ndarray, steps: int, amp_level: str = "O1",
                lr: float = 0.01) -> List[float]:
    """Losses of `steps` SGD-momentum steps on one batch under AMP `amp_level` ("O0": float32), with
    Paddle's GradScaler and, for O2, `paddle.amp.decorate` (float16 weights, float32 master copies)."""
    model.train()
    optimizer = paddle.optimizer.Momentum(learning_rate=lr, momentum=0.9, parameters=model.parameters(),
                                          multi_precision=amp_level == "O2")
    if amp_level == "O2":
        model, optimizer = paddle.amp.decorate(models=model, optimizers=optimizer, level="O2", dtype="float16")
    scaler = paddle.amp.GradScaler(enable=amp_level != "O0", init_loss_scaling=2.0**10)
    x, y = paddle.to_tensor(images), paddle.to_tensor(labels)
    losses = []
    for _ in range(steps):
        with paddle.amp.auto_cast(enable=amp_level != "O0", level=amp_level if amp_level != "O0" else "O1", dtype="float16"):
            loss = paddle.nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.clear_grad()
        losses.append(loss.detach())
    return [float(v) for v in losses]  # read back once, not every step


def images_per_second(model: paddle.nn.Layer, images: np.ndarray, labels: np.ndarray, steps: int, warmup: int,
                      synchronize: Callable[[], None], amp_level: str = "O1") -> float:
    """Training throughput: `steps` timed steps after `warmup` ones (queued device work finished first)."""
    train_steps(model, images, labels, warmup, amp_level)
    synchronize()
    start = time.perf_counter()
    train_steps(model, images, labels, steps, amp_level)
    synchronize()
    return steps * len(images) / (time.perf_counter() - start)


def amp_rows(name: str, images: np.ndarray, labels: np.ndarray, classes: int, steps: int) -> List[Row]:
    rows = []
    for level in ("O1", "O2"):
        losses = train_steps(build(name, classes, seed=0), images, labels, steps, level)
        finite = all(math.isfinite(v) for v in losses)
        ok = finite and losses[-1] < losses[0]
        rows.append(Row(name, "AMP training steps", f"{level} float16, {steps} steps, batch {len(images)}",
                        "ok" if ok else "FAIL: loss " + ("not finite" if not finite else "did not decrease"),
                        f"loss {losses[0]:.4f} -> {losses[-1]:.4f}"))
    return rows


def layout_rows(name: str, images: np.ndarray, labels: np.ndarray, classes: int, steps: int,
                synchronize: Callable[[], None]) -> List[Row]:
    speed = {fmt: images_per_second(build(name, classes, 0, fmt), images, labels, steps, 3, synchronize)
             for fmt in ("NCHW", "NHWC")}
    return [Row(name, "training throughput", f"{fmt}, AMP O1, batch {len(images)}", "ok",
                f"{speed[fmt]:.0f} img/s" + (f" ({speed['NHWC'] / speed['NCHW']:.2f}x NCHW)" if fmt == "NHWC" else ""))
            for fmt in ("NCHW", "NHWC")]


def relative_difference(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12))


def export(model: paddle.nn.Layer, name: str, directory: str, size: int) -> str:
    from ppcls_ext.engine.export import export_inference_model, inference_config

    return export_inference_model(model, directory, inference_config(name, [], 5, None, [3, size, size], False),
                                  softmax=False)


def child_env(**extra: str) -> dict:
    """This environment, with ppcls_ext importable in a child process however this one found it."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, **extra)


def export_legacy(name: str, weights: str, directory: str, size: int, classes: int) -> str:
    """The legacy (`inference.pdmodel`) export of the same weights: Paddle writes it when the PIR API is
    off, which has to be set before Paddle starts, so in a child process."""
    command = [sys.executable, "-m", "ppcls_ext.gpu_check", "--export-legacy", name, weights, directory, str(size), str(classes)]
    done = subprocess.run(command, env=child_env(FLAGS_enable_pir_api="0"), capture_output=True, text=True)
    if done.returncode != 0 or not os.path.isfile(os.path.join(directory, "inference.pdmodel")):
        raise RuntimeError(f"legacy export failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    return directory


def inference_rows(name: str, model: paddle.nn.Layer, images: np.ndarray, workdir: str,
                   variants: Sequence[Tuple[str, str, object]]) -> List[Row]:
    """Each (label, route, InferenceOptions) variant against the dygraph model's logits, and its median
    latency at the batch's size. Route "pir" serves the Paddle 3 export, "legacy" the inference.pdmodel one."""
    from ppcls_ext.inference.paddle_backend import PaddlePredictor

    model.eval()
    with paddle.no_grad():
        expected = model(paddle.to_tensor(images)).numpy()
    size, classes = images.shape[-1], expected.shape[-1]
    exports = {"pir": lambda: export(model, name, os.path.join(workdir, "pir"), size)}
    weights = os.path.join(workdir, "weights.pdparams")
    exports["legacy"] = lambda: (paddle.save(model.state_dict(), weights),
                                 export_legacy(name, weights, os.path.join(workdir, "legacy"), size, classes))[1]
    made = {}
    rows = []
    for label, route, options in variants:
        if route not in made:
            try:
                made[route] = exports[route]()
            except Exception as error:  # noqa: BLE001 (reported in the table)
                made[route] = error
        if isinstance(made[route], Exception):  # a legacy export this Paddle cannot write is not the GPU's fault
            verdict = "skipped" if route == "legacy" else "FAIL"
            rows.append(Row(name, "inference", f"{label} ({route} export)", f"{verdict}: {made[route]}"[:200]))
            continue
        try:
            warmup = lambda: [images[:1], images]  # noqa: E731 (shape collection / calibration batches)
            predictor = PaddlePredictor(made[route], options, warmup)
            difference = relative_difference(predictor.run(images), expected)
            latency = statistics.median(time_calls(lambda: predictor.run(images), repeats=10, warmup=3))
        except Exception as error:  # one failing setting is reported, the others still run
            rows.append(Row(name, "inference", f"{label} ({route} export)",
                            "FAIL: " + (str(error).strip().splitlines() or [type(error).__name__])[-1][:160]))
            continue
        tolerance = TOLERANCES.get(label, 1e-3)
        rows.append(Row(name, "inference", f"{label} ({route} export)",
                        "ok" if difference <= tolerance else f"FAIL: above {tolerance:g}",
                        f"rel. logit diff {difference:.1e}, {latency * 1e3:.2f} ms at batch {len(images)}"))
    return rows


def gpu_variants(cache: str, batch: int, size: int) -> List[Tuple[str, str, object]]:
    from ppcls_ext.inference.options import InferenceOptions, TensorRTOptions

    shapes = ((1, 3, size, size), (batch, 3, size, size), (batch, 3, size, size))
    variants = [("paddle-gpu", "pir", InferenceOptions(device="gpu"))]
    for precision in ("fp32", "fp16"):
        variants.append((f"trt-{precision}", "pir", InferenceOptions(device="gpu", tensorrt=TensorRTOptions(
            precision=precision, shapes=shapes, cache_dir=cache))))
    variants.append(("trt-int8", "legacy", InferenceOptions(device="gpu", tensorrt=TensorRTOptions(
        precision="int8", calibration=True, max_batch_size=batch, collect_sizes=[size], cache_dir=cache))))
    return variants


def sync_batchnorm_worker(output: str) -> None:
    """Under `paddle.distributed.launch`: one SyncBatchNorm training step with each rank on its half of
    the fixed batch; rank 0 writes the largest difference of the BN running means from plain BN on the
    whole batch (equal with correct synchronisation) and between the ranks."""
    paddle.distributed.init_parallel_env()
    rank, world = paddle.distributed.get_rank(), paddle.distributed.get_world_size()
    images, labels = fixed_batch(8 * world, 64, 10)
    reference = build(MODELS[0], 10, seed=0)
    synced = paddle.nn.SyncBatchNorm.convert_sync_batchnorm(build(MODELS[0], 10, seed=0))
    parallel = paddle.DataParallel(synced)
    part = slice(rank * 8, (rank + 1) * 8)
    parallel.train()
    paddle.nn.functional.cross_entropy(parallel(paddle.to_tensor(images[part])), paddle.to_tensor(labels[part])).backward()
    reference.train()
    reference(paddle.to_tensor(images))
    means = sorted(key for key in reference.state_dict() if key.endswith("._mean"))
    mine = paddle.concat([synced.state_dict()[key].flatten() for key in means])
    gathered: List[paddle.Tensor] = []
    paddle.distributed.all_gather(gathered, mine)
    if rank == 0:
        full = paddle.concat([reference.state_dict()[key].flatten() for key in means]).numpy()
        with open(output, "w", encoding="utf-8") as f:
            json.dump({"vs_full_batch": float(np.abs(mine.numpy() - full).max()),
                       "between_ranks": float(max(np.abs(g.numpy() - mine.numpy()).max() for g in gathered))}, f)


def sync_batchnorm_row(workdir: str) -> Row:
    count = paddle.device.cuda.device_count()
    setting = "MicroNet_M0, 1 step, launch"
    if count < 2:
        return Row(MODELS[0], "SyncBatchNorm", setting, "skipped: needs 2+ GPUs", f"{count} GPU visible")
    output, entry = os.path.join(workdir, "syncbn.json"), os.path.join(workdir, "syncbn_worker.py")
    with open(entry, "w", encoding="utf-8") as f:  # launch runs a script file
        f.write("import sys\nfrom ppcls_ext.gpu_check import main\nsys.exit(main(sys.argv[1:]))\n")
    command = [sys.executable, "-m", "paddle.distributed.launch", "--devices", "0,1", "--log_dir",
               os.path.join(workdir, "launch_log"), entry, "--sync-bn-worker", output]
    done = subprocess.run(command, env=child_env(), capture_output=True, text=True)
    if done.returncode != 0 or not os.path.isfile(output):
        return Row(MODELS[0], "SyncBatchNorm", setting, f"FAIL: launch exited {done.returncode} (logs in {workdir}/launch_log)")
    with open(output, encoding="utf-8") as f:
        result = json.load(f)
    ok = result["vs_full_batch"] < 1e-4 and result["between_ranks"] == 0.0
    return Row(MODELS[0], "SyncBatchNorm", setting.replace("launch", "2 GPUs"), "ok" if ok else "FAIL: statistics differ",
               f"BN mean vs whole batch {result['vs_full_batch']:.1e}, between ranks {result['between_ranks']:.1e}")


def run_checks(models: Sequence[str], batch: int, size: int, steps: int, workdir: str) -> List[Row]:
    paddle.set_device("gpu:0")
    rows: List[Row] = []
    for name in models:
        images, labels = fixed_batch(batch, size, 10)
        rows += amp_rows(name, images, labels, 10, steps)
        rows += layout_rows(name, images, labels, 10, steps, paddle.device.cuda.synchronize)
        directory = os.path.join(workdir, name)
        rows += inference_rows(name, build(name, 10, seed=0), images, directory,
                               gpu_variants(os.path.join(directory, "tensorrt_cache"), batch, size))
    rows.append(sync_batchnorm_row(workdir))
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated model names")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=8, help="AMP training steps (and timed throughput steps)")
    parser.add_argument("--workdir", help="where exports and engines go (default: a temporary folder)")
    parser.add_argument("--sync-bn-worker", metavar="OUTPUT", help=argparse.SUPPRESS)
    parser.add_argument("--export-legacy", nargs=5, metavar="X", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sync_bn_worker:
        sync_batchnorm_worker(args.sync_bn_worker)
        return 0
    if args.export_legacy:
        name, weights, directory, size, classes = args.export_legacy
        model = build(name, int(classes), seed=0)
        model.set_state_dict(paddle.load(weights))
        export(model, name, directory, int(size))
        return 0
    missing = what_is_missing()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ppcls_ext_gpu_check_") as scratch:
        rows = run_checks(args.models.split(","), args.batch, args.size, args.steps, args.workdir or scratch)
    print(results_table(rows))
    return exit_status(rows)


if __name__ == "__main__":
    sys.exit(main())
