"""Honest speed of an int8 model: the float and the int8 model each served alone by its own worker process
(`inference.worker.BackendProcess`), their blocks of calls alternating (`timing.alternate`), on this machine,
whose CPU flags decide whether int8 can be faster (VNNI: int8 dot products in one instruction)."""
from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Dict, List, Sequence

from ..inference.int8_model import INT8_BACKEND
from ..inference.options import InferenceOptions
from ..inference.worker import BackendProcess
from ..timing import SETTLE_SECONDS, alternate, median_ms, paired_ratio

#: /proc/cpuinfo flags that decide int8 speed on x86 (VNNI: AVX-512 VNNI or AVX-VNNI; AMX: Sapphire Rapids)
INT8_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
FLOAT_BACKEND = "onnxruntime"


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> Dict[str, bool]:
    """Which of INT8_FLAGS this CPU has (all False where /proc/cpuinfo is unreadable)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith(("flags", "Features"))), [])
    except OSError:
        flags = []
    return {flag: flag in flags for flag in INT8_FLAGS}


def has_vnni(flags: Dict[str, bool]) -> bool:
    return flags.get("avx512_vnni", False) or flags.get("avx_vnni", False) or flags.get("amx_int8", False)


def cpu_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), platform.processor())
    except OSError:
        return platform.processor() or platform.machine()


@dataclass(frozen=True)
class Latency:
    """Median milliseconds per call of the float and the int8 model (ONNX Runtime, each alone in its
    process) on batches of `shape`, and the median of the paired int8 / float ratios."""

    shape: Sequence[int]
    threads: int
    float_ms: float
    int8_ms: float
    ratio: float

    @property
    def int8_faster(self) -> bool:
        return self.ratio < 1.0


def time_alone(model_dir: str, shape: Sequence[int], threads: int, rounds: int = 5, calls: int = 5,
               warmup: int = 2) -> Latency:
    """Time the folder's float ONNX model and its int8 model, each served by its own worker process."""
    options = InferenceOptions(backend="onnxruntime", cpu_threads=threads)
    workers = {}
    try:
        for backend in (FLOAT_BACKEND, INT8_BACKEND):
            workers[backend] = BackendProcess(model_dir, backend, options)
        samples: Dict[str, List[float]] = alternate(
            {name: (lambda worker=worker: worker.time(shape, calls, warmup)) for name, worker in workers.items()},
            rounds, settle=SETTLE_SECONDS)
    finally:
        for worker in workers.values():
            worker.close()
    return Latency(list(shape), threads, median_ms(samples[FLOAT_BACKEND]), median_ms(samples[INT8_BACKEND]),
                   paired_ratio(samples[INT8_BACKEND], samples[FLOAT_BACKEND]))
