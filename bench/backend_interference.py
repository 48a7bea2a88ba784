"""Why backends are timed each in its own process: what a Paddle Inference call leaves running, and what
it does to ONNX Runtime timed next in the same process.

For each model, a child process holds a Paddle Inference predictor (oneDNN on or off) and an ONNX
Runtime session of the same export and measures, alternating the conditions every round:

- CPU seconds used by each thread of the process in the 0.3 s after one call returns (Paddle's OpenMP
  workers spin for KMP_BLOCKTIME, 200 ms by default; ONNX Runtime's intra-op threads briefly);
- ONNX Runtime's latency in a tight loop, right after a Paddle call (how the old deploy benchmark and
  `backend: auto` measured it), right after a call of a second ONNX Runtime session of the same model
  (how the old bench/vs_paddleclas.py interleaved PaddleClas's export and ours), and 0.25 s after a
  Paddle call (`ppcls_ext.timing.SETTLE_SECONDS`; ONNX Runtime's threads have gone to sleep by then).

The child runs once with the runtimes' default spinning and once with `cpu_spin_wait: False` (our
InferenceOptions: KMP_BLOCKTIME=0 for Paddle's Intel OpenMP, allow_spinning=0 for ONNX Runtime); ONNX
Runtime alone in its own worker process (default spinning) is the reference ("alone"). Linux only
(per-thread CPU time from /proc).

    python bench/backend_interference.py                        # MicroNet_M0, EfficientNetB0; ~3 min
    python bench/backend_interference.py --models EfficientNetB0 --onednn off --markdown output/interference.md
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import List, Optional, Sequence

import ppcls_ext  # first: applies the CPU settings before Paddle loads MKL
from ppcls_ext.serving.export import export_inference_model, inference_config
from ppcls_ext.inference.onnx_backend import export_onnx
from ppcls_ext.inference.options import InferenceOptions
from ppcls_ext.inference.worker import BackendProcess, build_cpu_predictor, input_batch
from ppcls_ext.models.deploy import deploy_form
from ppcls_ext.report import markdown_table, publish
from ppcls_ext.timing import SETTLE_SECONDS, alternate, busiest_thread_after, median_ms, time_calls
from ppcls_ext.weights import randomize_

AFTER_CALL_WINDOW = 0.3
CONDITIONS = ("tight loop", "right after a Paddle call", "right after another ORT session's call",
              f"{SETTLE_SECONDS} s after a Paddle call")


def inner(model_dir: str, paddle_backend: str, threads: int, rounds: int, calls: int, spin_wait: bool) -> dict:
    """The in-process measurements (run in a fresh child: KMP_BLOCKTIME is read when OpenMP starts)."""
    import statistics

    options = InferenceOptions(cpu_threads=threads, cpu_spin_wait=spin_wait)
    paddle_run = build_cpu_predictor(model_dir, paddle_backend, options).run
    ort_run = build_cpu_predictor(model_dir, "onnxruntime", options).run
    other_ort_run = build_cpu_predictor(model_dir, "onnxruntime", options).run
    batch = input_batch((1, 3, 224, 224))
    paddle_call, ort_call, other_ort_call = (lambda: paddle_run(batch)), (lambda: ort_run(batch)), (lambda: other_ort_run(batch))
    for call in (paddle_call, ort_call, other_ort_call):
        time_calls(call, 0, 3)

    def after(previous, pause: float = 0.0):
        def block() -> List[float]:
            samples = []
            for _ in range(calls):
                previous()
                time.sleep(pause)
                samples += time_calls(ort_call, 1)
            return samples
        return block

    blocks = {CONDITIONS[0]: lambda: time_calls(ort_call, calls, 1), CONDITIONS[1]: after(paddle_call),
              CONDITIONS[2]: after(other_ort_call), CONDITIONS[3]: after(paddle_call, SETTLE_SECONDS)}
    samples = alternate(blocks, rounds, settle=SETTLE_SECONDS)
    spin = {"paddle": statistics.median(busiest_thread_after(paddle_call, AFTER_CALL_WINDOW) for _ in range(5)),
            "onnxruntime": statistics.median(busiest_thread_after(ort_call, AFTER_CALL_WINDOW) for _ in range(5))}
    return {"ort_ms": {name: median_ms(values) for name, values in samples.items()}, "spin_s": spin}


def run_inner(model_dir: str, paddle_backend: str, args, spin_wait: bool) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in ("KMP_BLOCKTIME", "OMP_WAIT_POLICY")}
    with tempfile.NamedTemporaryFile("r", suffix=".json") as result:
        command = [sys.executable, os.path.abspath(__file__), "--inner", model_dir, paddle_backend, result.name,
                   "--threads", str(args.threads), "--rounds", str(args.rounds), "--calls", str(args.calls),
                   "--spin-wait", "1" if spin_wait else "0"]
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return json.load(result)


def export(name: str, directory: str) -> str:
    model = ppcls_ext.create_model(name)
    randomize_(model.state_dict())
    model.eval()
    description = inference_config(name, [], 5, None, [3, 224, 224], softmax=False)
    path = export_inference_model(deploy_form(model), directory, description, softmax=False)
    export_onnx(path)
    return path


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["MicroNet_M0", "EfficientNetB0"])
    parser.add_argument("--onednn", choices=("on", "off", "both"), default="both", help="Paddle Inference's oneDNN")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=5, help="timed calls per condition and round")
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument("--inner", nargs=3, metavar=("MODEL_DIR", "PADDLE_BACKEND", "RESULT_JSON"), help=argparse.SUPPRESS)
    parser.add_argument("--spin-wait", choices=("0", "1"), default="1", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner:
        model_dir, paddle_backend, result = args.inner
        with open(result, "w", encoding="utf-8") as f:
            json.dump(inner(model_dir, paddle_backend, args.threads, args.rounds, args.calls, args.spin_wait == "1"), f)
        return
    backends = {"on": ["paddle-cpu-onednn"], "off": ["paddle-cpu"], "both": ["paddle-cpu", "paddle-cpu-onednn"]}[args.onednn]
    header = ["model", "Paddle backend", "cpu_spin_wait", "busiest other thread, CPU s in the 0.3 s after a Paddle call",
              "same, after an ONNX Runtime call", "ONNX Runtime alone, ms"] + [f"ORT in-process, {c}, ms" for c in CONDITIONS]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model_dir = export(name, os.path.join(tmp, name))
            with BackendProcess(model_dir, "onnxruntime", InferenceOptions(cpu_threads=args.threads)) as alone:
                alone_ms = median_ms(alone.time((1, 3, 224, 224), args.rounds * args.calls, 3))
            for backend in backends:
                for spin_wait in (True, False):
                    result = run_inner(model_dir, backend, args, spin_wait)
                    rows.append([name, backend, str(spin_wait), f"{result['spin_s']['paddle']:.3f}",
                                 f"{result['spin_s']['onnxruntime']:.3f}", f"{alone_ms:.2f}"]
                                + [f"{result['ort_ms'][c]:.2f}" for c in CONDITIONS])
                    print(" | ".join(map(str, rows[-1])), flush=True)
    notes = [f"{args.threads} threads per backend; ONNX Runtime latency at batch 1, 224 px: medians of {args.rounds} "
             f"rounds x {args.calls} calls, conditions alternating every round"]
    publish("\n".join([markdown_table(header, rows, "lll" + "r" * (len(header) - 3)), ""] + [f"- {n}" for n in notes]), args.markdown)


if __name__ == "__main__":
    main()
