"""How every benchmark here times things: seconds per call, and contenders measured in alternating blocks.

Contenders alternate (every round runs each one's block once, in an order flipped every round), so drift
of the machine's speed hits them alike and the median of the per-round ratios cancels it. `settle`
sleeps between blocks: after a call, Paddle's OpenMP workers keep spinning for KMP_BLOCKTIME (200 ms by
default) and ONNX Runtime's for a few ms, taking cores from whatever runs next; a contender measured in
that window is measured against a stranger's threads, not as it would be served.
"""
from __future__ import annotations

import os
import statistics
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Sequence

#: seconds to wait between blocks of different contenders: longer than Intel OpenMP's default spin
#: (KMP_BLOCKTIME, 200 ms) and ONNX Runtime's (~20 ms measured), so no stranger's thread is still running
SETTLE_SECONDS = 0.25


def time_calls(run: Callable[[], Any], repeats: int, warmup: int = 0) -> List[float]:
    """Seconds taken by each of `repeats` back-to-back calls of `run`, after `warmup` untimed calls."""
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return samples


def alternate(blocks: Mapping[str, Callable[[], Sequence[float]]], rounds: int,
              settle: float = 0.0) -> Dict[str, List[float]]:
    """Run each contender's block (a callable returning its time samples) once per round, in an order
    flipped every round, sleeping `settle` seconds before each block; returns every contender's samples
    in round order (so the i-th samples of all contenders were taken moments apart)."""
    names = list(blocks)
    samples: Dict[str, List[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        for name in names if round_index % 2 == 0 else reversed(names):
            if settle:
                time.sleep(settle)
            samples[name].extend(blocks[name]())
    return samples


def median_ms(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1000.0


def percentile_ms(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100, linear interpolation) in milliseconds."""
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return (ordered[low] + (ordered[high] - ordered[low]) * (position - low)) * 1000.0


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median of the ratios of samples taken side by side (same index): robust to drift between them.
    Sequences of unequal length are compared on their median instead."""
    if len(numerator) != len(denominator):
        return statistics.median(numerator) / statistics.median(denominator)
    return statistics.median(n / d for n, d in zip(numerator, denominator))


def thread_cpu_seconds() -> Dict[int, float]:
    """CPU seconds (user + system) used so far by each thread of this process (Linux: /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    usage = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        usage[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
    return usage


def busiest_thread_after(call: Callable[[], Any], window: float = 0.3) -> float:
    """CPU seconds used in the `window` seconds after `call()` returns by the busiest thread other than the
    calling one: what a runtime's worker threads keep burning (spinning) once a call is over."""
    call()
    before = thread_cpu_seconds()
    time.sleep(window)
    after = thread_cpu_seconds()
    me = threading.get_native_id()
    return max((after[t] - before.get(t, 0.0) for t in after if t != me), default=0.0)
