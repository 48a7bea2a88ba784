"""Verify a GPU installation: `python tools/gpu_check.py` on a CUDA build of PaddlePaddle.

For one MicroNet and one EfficientNet it runs these checks (`--only` / `--skip` choose among them):
  amp          a few AMP O1 and O2 training steps on a fixed batch (loss finite and decreasing)
  throughput   NCHW vs NHWC training throughput (AMP O1; the timed steps' losses must be finite)
  engine       real Engine runs (ppcls_ext.engine.Engine): AMP O1 and O2, update_freq 2, EMA, then a resume
  paddle-gpu   the Paddle 3 export on Paddle Inference, GPU
  trt-fp32     TensorRT fp32 (the Paddle 3 export through paddle.tensorrt.convert)
  trt-fp16     TensorRT fp16 (likewise)
  trt-int8     TensorRT int8 on the legacy export, calibrated on real photos
  trt-int8-pir TensorRT int8 on the float Paddle 3 export: must be refused before anything is built
  syncbn       SyncBatchNorm under `paddle.distributed.launch` (2+ GPUs)
Inference settings are compared with the dygraph model's logits on real photos, with latency. It prints one
table and exits 1 if a check failed, 3 if none failed but one was skipped (e.g. syncbn on one GPU: `--skip
syncbn`), 0 when every check ran and passed. On a CPU build it says in one line what it needs and exits 2.
"""
from __future__ import annotations

import copy
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import paddle

from ppcls_ext.registry import create_model, get_model_config
from ppcls_ext.report import markdown_table
from ppcls_ext.timing import time_calls

MODELS = ("MicroNet_M0", "EfficientNetB0")
CHECKS = ("amp", "throughput", "engine", "paddle-gpu", "trt-fp32", "trt-fp16", "trt-int8", "trt-int8-pir", "syncbn")
INFERENCE_CHECKS = ("paddle-gpu", "trt-fp32", "trt-fp16", "trt-int8", "trt-int8-pir")
#: largest max |logit difference| / max |logit| accepted per inference setting (TensorRT fp32 may use TF32)
TOLERANCES = {"paddle-gpu": 1e-3, "trt-fp32": 1e-2, "trt-fp16": 5e-2, "trt-int8": 0.25}
HEADER = ("model", "check", "setting", "result", "measured")
#: the export's preprocessing (ImageNet normalisation); `size` is filled in
PREPROCESS = [{"ResizeImage": {"size": None}},
              {"NormalizeImage": {"scale": 1.0 / 255.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                  "order": ""}},
              {"ToCHWImage": None}]
CALIBRATION_BATCHES = 4


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
    """1 if a check failed, 3 if none failed but one was skipped, 0 when all ran and passed."""
    if any(row.result.startswith("FAIL") for row in rows):
        return 1
    return 3 if any(row.result.startswith("skipped") for row in rows) else 0


def selected_checks(only: Optional[str], skip: Optional[str]) -> List[str]:
    """The checks to run from `--only` / `--skip` (comma-separated names of CHECKS); ValueError names an
    unknown one."""
    def names(text: Optional[str]) -> List[str]:
        chosen = [name.strip() for name in (text or "").split(",") if name.strip()]
        unknown = [name for name in chosen if name not in CHECKS]
        if unknown:
            raise ValueError(f"unknown check {unknown[0]!r}; the checks are {', '.join(CHECKS)}")
        return chosen

    wanted, skipped = names(only), names(skip)
    return [name for name in CHECKS if (not wanted or name in wanted) and name not in skipped]


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
                      synchronize: Callable[[], None], amp_level: str = "O1") -> Tuple[float, List[float]]:
    """Training throughput: `steps` timed steps after `warmup` ones (queued device work finished first),
    and the timed steps' losses."""
    train_steps(model, images, labels, warmup, amp_level)
    synchronize()
    start = time.perf_counter()
    losses = train_steps(model, images, labels, steps, amp_level)
    synchronize()
    return steps * len(images) / (time.perf_counter() - start), losses


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
    """Training throughput in NCHW and NHWC; a row fails when a timed step's loss is not finite (a fast
    step that computes NaN is no result)."""
    timed = {fmt: images_per_second(build(name, classes, 0, fmt), images, labels, steps, 3, synchronize)
             for fmt in ("NCHW", "NHWC")}
    speed = {fmt: value[0] for fmt, value in timed.items()}
    rows = []
    for fmt in ("NCHW", "NHWC"):
        finite = all(math.isfinite(v) for v in timed[fmt][1])
        rows.append(Row(name, "training throughput", f"{fmt}, AMP O1, batch {len(images)}",
                        "ok" if finite else "FAIL: a timed step's loss is not finite",
                        f"{speed[fmt]:.0f} img/s" + (f" ({speed['NHWC'] / speed['NCHW']:.2f}x NCHW)" if fmt == "NHWC" else "")))
    return rows


def relative_difference(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12))


def preprocessing(size: int) -> List[Dict[str, Any]]:
    ops = copy.deepcopy(PREPROCESS)
    ops[0]["ResizeImage"]["size"] = size
    return ops


def export(model: paddle.nn.Layer, name: str, directory: str, size: int, export_format: str = "pir") -> str:
    """The export tools/export_model.py writes (`export_format` "pir": inference.json; "legacy":
    inference.pdmodel, written under Paddle's legacy program guard), with the check's preprocessing."""
    from ppcls_ext.serving.export import export_inference_model, inference_config

    return export_inference_model(model, directory, inference_config(name, preprocessing(size), 5, None, [3, size, size], False),
                                  softmax=False, export_format=export_format)


def child_env(**extra: str) -> dict:
    """This environment, with ppcls_ext importable in a child process however this one found it."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, **extra)


def photo_folder(directory: str, count: int, size: int, seed: int) -> str:
    """`count` real photographs (crops of scikit-learn's sample photos, a little larger than `size`) as JPEGs."""
    from ppcls_ext.data.demo import photo_jpegs

    os.makedirs(directory, exist_ok=True)
    for index, data in enumerate(photo_jpegs(count, size=(size + size // 4, size + size // 8), seed=seed)):
        with open(os.path.join(directory, f"photo_{index:03d}.jpg"), "wb") as f:
            f.write(data)
    return directory


def photo_batch(directory: str, batch: int, size: int) -> np.ndarray:
    """`batch` photos of `directory` through the export's preprocessing, as one NCHW float32 batch."""
    from ppcls_ext.data.calibration import calibration_batches

    return calibration_batches(directory, batch_size=batch, num_batches=1, transforms=preprocessing(size))[0]


@dataclass
class Variant:
    """An inference setting to check: its check name, the export it serves ("pir" or "legacy"), the
    options, and the refusal expected instead of a result (a DeploymentError containing that text)."""

    label: str
    route: str
    options: Any
    refusal: Optional[str] = None


def inference_rows(name: str, model: paddle.nn.Layer, images: np.ndarray, workdir: str,
                   variants: Sequence[Variant]) -> List[Row]:
    """Each variant against the dygraph model's logits, and its median latency at the batch's size (or,
    for a variant that must be refused, that it is). Route "pir" serves the Paddle 3 export, "legacy" the
    inference.pdmodel one of the same weights."""
    from ppcls_ext.inference.options import DeploymentError
    from ppcls_ext.inference.paddle_backend import PaddlePredictor

    model.eval()
    with paddle.no_grad():
        expected = model(paddle.to_tensor(images)).numpy()
    size = images.shape[-1]
    made: Dict[str, object] = {}
    rows = []
    for variant in variants:
        setting = f"{variant.label} ({variant.route} export)"
        if variant.route not in made:
            try:
                made[variant.route] = export(model, name, os.path.join(workdir, variant.route), size, variant.route)
            except Exception as error:  # noqa: BLE001 (reported in the table)
                made[variant.route] = error
        if isinstance(made[variant.route], Exception):
            rows.append(Row(name, "inference", setting, f"FAIL: export: {made[variant.route]}"[:200]))
            continue
        try:
            shapes = [(1, *images.shape[1:]), images.shape]
            predictor = PaddlePredictor(str(made[variant.route]), variant.options, shapes, serving_shape=images.shape)
        except DeploymentError as error:
            if variant.refusal and variant.refusal in str(error):
                rows.append(Row(name, "inference", setting, "ok", "refused before building, as it must"))
            else:
                rows.append(Row(name, "inference", setting, "FAIL: " + str(error).strip().splitlines()[-1][:160]))
            continue
        except Exception as error:  # one failing setting is reported, the others still run
            rows.append(Row(name, "inference", setting,
                            "FAIL: " + (str(error).strip().splitlines() or [type(error).__name__])[-1][:160]))
            continue
        if variant.refusal:
            rows.append(Row(name, "inference", setting, f"FAIL: built; expected a refusal ({variant.refusal})"))
            continue
        try:
            difference = relative_difference(predictor.run(images), expected)
            latency = statistics.median(time_calls(lambda: predictor.run(images), repeats=10, warmup=3))
        except Exception as error:  # noqa: BLE001 (reported in the table)
            rows.append(Row(name, "inference", setting, "FAIL: " + (str(error).strip().splitlines() or [type(error).__name__])[-1][:160]))
            continue
        tolerance = TOLERANCES.get(variant.label, 1e-3)
        rows.append(Row(name, "inference", setting, "ok" if difference <= tolerance else f"FAIL: above {tolerance:g}",
                        f"rel. logit diff {difference:.1e}, {latency * 1e3:.2f} ms at batch {len(images)}"))
    return rows


def gpu_variants(cache: str, batch: int, size: int, calibration_photos: str, checks: Sequence[str]) -> List[Variant]:
    """The inference settings among `checks`: Paddle on GPU, TensorRT fp32/fp16 (PIR export), int8
    calibrated on `calibration_photos` (legacy export), and int8 on the float PIR export (refused)."""
    from ppcls_ext.inference.options import InferenceOptions, TensorRTOptions

    shapes = ((1, 3, size, size), (batch, 3, size, size), (batch, 3, size, size))

    def trt(**options: Any) -> Any:
        return InferenceOptions(device="gpu", tensorrt=TensorRTOptions(shapes=shapes, cache_dir=cache, **options))

    variants = {
        "paddle-gpu": Variant("paddle-gpu", "pir", InferenceOptions(device="gpu")),
        "trt-fp32": Variant("trt-fp32", "pir", trt(precision="fp32")),
        "trt-fp16": Variant("trt-fp16", "pir", trt(precision="fp16")),
        "trt-int8": Variant("trt-int8", "legacy", trt(precision="int8", calibration=True, calibration_data=calibration_photos,
                                                      calibration_batches=CALIBRATION_BATCHES)),
        "trt-int8-pir": Variant("trt-int8-pir", "pir", trt(precision="int8"), refusal="needs quantization scales"),
    }
    return [variants[name] for name in INFERENCE_CHECKS if name in checks]


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
        f.write("import sys\nfrom ppcls_ext.cli.gpu_check import main\nsys.exit(main(sys.argv[1:]))\n")
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


def run_checks(models: Sequence[str], batch: int, size: int, steps: int, workdir: str, checks: Sequence[str]) -> List[Row]:
    paddle.set_device("gpu:0")
    rows: List[Row] = []
    photos = os.path.join(workdir, "photos")
    if any(name in INFERENCE_CHECKS for name in checks):
        photo_folder(os.path.join(photos, "check"), batch, size, seed=1)
        photo_folder(os.path.join(photos, "calibration"), CALIBRATION_BATCHES * batch, size, seed=2)
    digits = os.path.join(workdir, "digits")
    if "engine" in checks:
        from ppcls_ext.data.demo import make_digits_dataset

        make_digits_dataset(digits)
    for name in models:
        images, labels = fixed_batch(batch, size, 10)
        if "amp" in checks:
            rows += amp_rows(name, images, labels, 10, steps)
        if "throughput" in checks:
            rows += layout_rows(name, images, labels, 10, steps, paddle.device.cuda.synchronize)
        if "engine" in checks:
            rows += engine_rows(name, digits, os.path.join(workdir, "engine"))
        directory = os.path.join(workdir, name)
        variants = gpu_variants(os.path.join(directory, "tensorrt_cache"), batch, size, os.path.join(photos, "calibration"), checks)
        if variants:
            rows += inference_rows(name, build(name, 10, seed=0), photo_batch(os.path.join(photos, "check"), batch, size),
                                   directory, variants)
    if "syncbn" in checks:
        rows.append(sync_batchnorm_row(workdir))
    return rows


def engine_rows(name: str, data_dir: str, workdir: str, device: str = "gpu") -> List[Row]:
    """gpu_check_engine's runs at AMP O1 and O2, one row each (a failure to run is a FAIL row)."""
    from ppcls_ext.gpu_check_engine import engine_row

    rows = []
    for level in ("O1", "O2"):
        try:
            row = engine_row(name, level, data_dir, workdir, device)
        except Exception as error:  # noqa: BLE001 (reported in the table)
            row = {"setting": f"AMP {level}, update_freq 2, EMA, 2 epochs + resume",
                   "result": "FAIL: " + (str(error).strip().splitlines() or [type(error).__name__])[-1][:160], "measured": ""}
        rows.append(Row(name, "Engine", row["setting"], row["result"], row["measured"]))
    return rows

