"""One CPU backend of one export, served by its own Python process, as a deployment would serve it.

Why a process per backend: measured in one process, backends disturb each other. After a Paddle
Inference call, Intel OpenMP keeps Paddle's worker threads spinning for KMP_BLOCKTIME (200 ms by default:
0.2 s of CPU in the 0.3 s after each call, 0 with KMP_BLOCKTIME=0), and ONNX Runtime's intra-op threads
spin for ~20 ms after its calls; whatever runs in that window shares the cores with them (see
bench/backend_interference.py). A backend alone in its process meets only its own threads, as in service.

The parent talks to `python -m ppcls_ext.inference.worker` in JSON lines over its stdin and a private
copy of its stdout (the worker points file descriptor 1 at stderr, so output printed by Paddle or
ONNX Runtime cannot corrupt the protocol). The worker makes its input batches itself from a shape and
a seed; nothing large crosses the pipe but the outputs when asked for.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .options import DeploymentError, InferenceOptions

CPU_BACKENDS = ("paddle-cpu", "paddle-cpu-onednn", "onnxruntime")


def build_cpu_predictor(model_dir: str, backend: str, options: Optional[InferenceOptions] = None):
    """The predictor of `backend` (one of CPU_BACKENDS, or the int8 model's "onnxruntime-int8") for
    `model_dir`, with the thread and IR settings of `options`."""
    from .int8_model import INT8_BACKEND, int8_model_file
    from .onnx_backend import OnnxPredictor
    from .paddle_backend import PaddlePredictor

    options = options or InferenceOptions()
    if backend == "onnxruntime":
        return OnnxPredictor(model_dir, options.cpu_threads, options.cpu_spin_wait)
    if backend == INT8_BACKEND:
        model_file = int8_model_file(model_dir)
        if model_file is None:
            raise DeploymentError(f"{model_dir} holds no accepted int8 model (deploy/slim/quant_post_static.py writes one)")
        return OnnxPredictor(model_dir, options.cpu_threads, options.cpu_spin_wait, model_file=model_file, name=INT8_BACKEND)
    if backend in ("paddle-cpu", "paddle-cpu-onednn"):
        variant = dataclasses.replace(options, backend="paddle", device="cpu", tensorrt=None,
                                      enable_mkldnn=backend == "paddle-cpu-onednn")
        return PaddlePredictor(model_dir, variant)
    raise DeploymentError(f"unknown CPU backend {backend!r}; valid: {', '.join(CPU_BACKENDS + (INT8_BACKEND,))}")


def input_batch(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """The standard-normal float32 batch of `shape` that every timing of this package feeds."""
    return np.random.default_rng(seed).standard_normal(tuple(shape)).astype(np.float32)


class BackendProcess:
    """A worker process serving one backend of `model_dir`: `time(shape, repeats, warmup)` returns the
    seconds of back-to-back calls measured inside it, `outputs(shape)` the model's outputs. Use as a
    context manager, or call `close()`."""

    def __init__(self, model_dir: str, backend: str, options: Optional[InferenceOptions] = None):
        self.backend = backend
        self._log = tempfile.TemporaryFile(mode="w+b")
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in [env.get("PYTHONPATH")] if p])
        self._process = subprocess.Popen([sys.executable, "-m", "ppcls_ext.inference.worker"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self._log, env=env)
        fields = dataclasses.asdict(options or InferenceOptions())
        fields["tensorrt"] = None
        # not waited for here, so that several workers load at once; the first request waits for it
        self._loading = self._send({"do": "load", "model_dir": model_dir, "backend": backend, "options": fields})

    def _send(self, message: Dict[str, Any]) -> bool:
        try:
            self._process.stdin.write((json.dumps(message) + "\n").encode())
            self._process.stdin.flush()
        except BrokenPipeError:
            pass  # reported by _receive, with the worker's own output
        return True

    def _receive(self) -> Any:
        line = self._process.stdout.readline()
        if not line:
            raise DeploymentError(f"the {self.backend} worker process stopped: {self._stderr_tail()}")
        reply = json.loads(line)
        if "error" in reply:
            raise DeploymentError(f"{self.backend}: {reply['error']}")
        return reply["result"]

    def _request(self, message: Dict[str, Any]) -> Any:
        if self._loading:
            self._loading = False
            self._receive()
        self._send(message)
        return self._receive()

    def _stderr_tail(self, lines: int = 5) -> str:
        self._log.seek(0)
        tail = self._log.read().decode(errors="replace").strip().splitlines()[-lines:]
        return " | ".join(tail) or "(no output)"

    def time(self, shape: Sequence[int], repeats: int, warmup: int = 1) -> List[float]:
        return self._request({"do": "time", "shape": list(shape), "repeats": repeats, "warmup": warmup})

    def outputs(self, shape: Sequence[int], seed: int = 0) -> np.ndarray:
        return np.asarray(self._request({"do": "outputs", "shape": list(shape), "seed": seed}), dtype=np.float32)

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.stdin.close()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()

    def __enter__(self) -> "BackendProcess":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _serve(requests, replies) -> None:
    """The worker's loop: one JSON request per line in, one JSON reply per line out."""
    from ..timing import time_calls

    predictor = None
    batches: Dict[tuple, np.ndarray] = {}
    for line in requests:
        message = json.loads(line)
        try:
            if message["do"] == "load":
                predictor = build_cpu_predictor(message["model_dir"], message["backend"],
                                                InferenceOptions(**message["options"]))
                result: Any = True
            else:
                key = (tuple(message["shape"]), message.get("seed", 0))
                batch = batches.setdefault(key, input_batch(*key))
                if message["do"] == "time":
                    result = time_calls(lambda: predictor.run(batch), message["repeats"], message["warmup"])
                else:
                    result = predictor.run(batch).astype(np.float64).tolist()
            reply = {"result": result}
        except Exception as error:  # reported to the parent, which raises it there with the backend's name
            reply = {"error": f"{type(error).__name__}: {error}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def main() -> None:
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything else printed to stdout goes to the log
    sys.stdout = sys.stderr
    _serve(sys.stdin, replies)


if __name__ == "__main__":
    main()
