"""MicroNet against MobileNetV3-Small of equal cost, on every CPU backend: latency beside MAdds and graph size.

Contenders, all with random weights of a realistic scale (`ppcls_ext.weights.randomize_`), batch norms in:
- MicroNet_M0..M3 (ours): exported as tools/export_model.py does (the deploy form, `models.deploy.deploy_form`);
- MicroNet_M0..M3 (PaddleClas): PaddleClas's own classes from the `paddleclas` wheel, holding the same weights
  as ours, exported by `paddle.jit.save` (so the outputs of the two exports are compared too);
- MobileNetV3_small_x0_35 / x0_5 / x0_75 (PaddleClas): `paddleclas.ppcls.arch`, exported by `paddle.jit.save`.
Every export is converted to ONNX by our `export_onnx`.

Timing: each (contender, backend) is served by a fresh worker process of its own (`worker.BackendProcess`), with
nothing else running: `--warmup` calls, then `--calls` back-to-back calls at each batch size; the process's median.
`--processes` such processes per (contender, backend), in rounds that visit every contender once (so a drift of the
machine's speed hits all alike); reported: the median over the processes. Backends: ONNX Runtime, Paddle Inference
with oneDNN and without, `--threads` threads each. MAdds: the multiply-adds of the convolutions and matrix products
of the exported graph at 224 px (ONNX Runtime's shapes); nodes: of the exported ONNX graph, and of the graph ONNX
Runtime runs after its optimisations.

Ratios compare each MicroNet with the smallest MobileNetV3-Small of at least its MAdds (M0-M2: x0_35, M3: x0_5)
and with PaddleClas's own export of the same MicroNet; "best Paddle" takes the faster of the two Paddle Inference
backends on each side.

    python bench/micronet_vs_mobilenetv3.py                  # everything; ~20 min on 2 cores
    python bench/micronet_vs_mobilenetv3.py --contenders MicroNet_M0 MobileNetV3_small_x0_35 --processes 1 --calls 10
"""
from __future__ import annotations

import argparse
import importlib
import os
import statistics
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import ppcls_ext  # first: applies the CPU settings before Paddle loads MKL
import numpy as np
import onnx
import onnxruntime as ort
import paddle
from ppcls_ext.cpu_env import APPLIED as CPU_NOTES
from ppcls_ext.serving.export import export_inference_model, inference_config
from ppcls_ext.inference.onnx_backend import GRAPH_OPTIMIZATION_LEVEL, export_onnx
from ppcls_ext.inference.options import InferenceOptions
from ppcls_ext.inference.worker import BackendProcess
from ppcls_ext.models.deploy import deploy_form
from ppcls_ext.paddleclas_plugin import paddleclas_original
from ppcls_ext.report import markdown_table, publish
from ppcls_ext.timing import median_ms
from ppcls_ext.weights import randomize_

MICRONETS = tuple(f"MicroNet_M{i}" for i in range(4))
MOBILENETS = ("MobileNetV3_small_x0_35", "MobileNetV3_small_x0_5", "MobileNetV3_small_x0_75")
#: our backend names -> table headers
BACKENDS = {"onnxruntime": "ONNX Runtime", "paddle-cpu-onednn": "Paddle oneDNN", "paddle-cpu": "Paddle plain"}
PADDLE_BACKENDS = ("paddle-cpu-onednn", "paddle-cpu")
SIZE = 224


@dataclass
class Contender:
    label: str
    model_dir: str
    madds: float = 0.0
    nodes: int = 0
    optimized_nodes: int = 0
    #: backend -> batch size -> per-process median latencies (ms)
    ms: Dict[str, Dict[int, List[float]]] = field(default_factory=dict)
    outputs: Optional[np.ndarray] = None  # on ONNX Runtime, for a batch of 2

    def median(self, backend: str, batch: int) -> float:
        return statistics.median(self.ms[backend][batch])

    def best_paddle(self, batch: int) -> float:
        return min(self.median(backend, batch) for backend in PADDLE_BACKENDS if backend in self.ms)


def mobilenet(name: str) -> paddle.nn.Layer:
    model = getattr(importlib.import_module("paddleclas.ppcls.arch.backbone"), name)()
    randomize_(model.state_dict(), seed=0)
    model.eval()
    return model


def micronets(name: str):
    """(ours, PaddleClas's) MicroNet holding the same random weights, in eval mode."""
    theirs = paddleclas_original(name)
    state = randomize_(theirs.state_dict(), seed=0)
    ours = ppcls_ext.create_model(name)
    ppcls_ext.load_weights(ours, state, source=f"PaddleClas {name}")
    ours.eval()
    return ours, theirs


def export(model: paddle.nn.Layer, name: str, directory: str) -> str:
    description = inference_config(name, [], 5, None, [3, SIZE, SIZE], softmax=False)
    path = export_inference_model(model, directory, description, softmax=False)
    export_onnx(path)
    return path


def graph_numbers(model_dir: str, directory: str) -> tuple:
    """(MAdds in millions of the convolutions and matrix products at SIZE px, exported nodes, nodes after ONNX
    Runtime's optimisations at our serving level)."""
    path = os.path.join(model_dir, "inference.onnx")
    model = onnx.load(path)
    weights = {tensor.name: list(tensor.dims) for tensor in model.graph.initializer}
    products = [node for node in model.graph.node if node.op_type in ("Conv", "MatMul", "Gemm")]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend([onnx.helper.make_empty_tensor_value_info(node.output[0]) for node in products])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    values = dict(zip(names, session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, SIZE, SIZE), np.float32)})))
    madds = 0
    for node in products:
        out, weight = values[node.output[0]], weights[node.input[1]]
        # a convolution: every output element reads in/groups x kh x kw inputs; a product: every row, K x N
        madds += out.size * int(np.prod(weight[1:])) if node.op_type == "Conv" else out.size // out.shape[-1] * int(np.prod(weight))
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION_LEVEL)
    options.optimized_model_filepath = os.path.join(directory, "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return madds / 1e6, len(model.graph.node), len(onnx.load(options.optimized_model_filepath).graph.node)


def prepare(names: Sequence[str], tmp: str) -> Dict[str, Contender]:
    contenders: Dict[str, Contender] = {}
    for name in names:
        if name in MICRONETS:
            ours, theirs = micronets(name)
            exports = {f"{name} (ours)": deploy_form(ours), f"{name} (PaddleClas)": theirs}
        elif name in MOBILENETS:
            exports = {f"{name} (PaddleClas)": mobilenet(name)}
        else:
            raise SystemExit(f"unknown contender {name!r}; choose from {', '.join(MICRONETS + MOBILENETS)}")
        for label, model in exports.items():
            directory = os.path.join(tmp, label.replace(" ", "_").replace("(", "").replace(")", ""))
            contender = Contender(label, export(model, name, os.path.join(directory, "inference")))
            contender.madds, contender.nodes, contender.optimized_nodes = graph_numbers(contender.model_dir, directory)
            contenders[label] = contender
            print(f"exported {label}: {contender.madds:.2f} MAdds, {contender.nodes} nodes "
                  f"({contender.optimized_nodes} after ONNX Runtime)", flush=True)
    return contenders


def measure(contenders: Dict[str, Contender], args) -> Dict[str, float]:
    """Time every (contender, backend) in `args.processes` fresh processes; returns the largest output difference
    between each of our MicroNets and PaddleClas's, on ONNX Runtime."""
    options = InferenceOptions(cpu_threads=args.threads)
    diffs: Dict[str, float] = {}
    for round_index in range(args.processes):
        for backend in args.backends:
            for contender in contenders.values():
                with BackendProcess(contender.model_dir, backend, options) as worker:
                    for batch in args.batches:
                        samples = worker.time((batch, 3, SIZE, SIZE), args.calls, args.warmup)
                        contender.ms.setdefault(backend, {}).setdefault(batch, []).append(median_ms(samples))
                    if round_index == 0 and backend == "onnxruntime":
                        contender.outputs = worker.outputs((2, 3, SIZE, SIZE))
            print(f"round {round_index + 1}/{args.processes}: {BACKENDS[backend]} done", flush=True)
    for label, contender in contenders.items():
        theirs = contenders.get(label.replace("(ours)", "(PaddleClas)"))
        if label.endswith("(ours)") and theirs is not None and contender.outputs is not None:
            diffs[label] = float(np.abs(contender.outputs - theirs.outputs).max())
    return diffs


def latency_table(contenders: Dict[str, Contender], args) -> str:
    header = ["model", "MAdds (M)", "ONNX nodes", "after ORT"] + [
        f"{BACKENDS[b]} bs{n}, ms" for b in args.backends for n in args.batches]
    rows = [[c.label, f"{c.madds:.1f}", c.nodes, c.optimized_nodes] + [f"{c.median(b, n):.2f}" for b in args.backends
                                                                       for n in args.batches]
            for c in contenders.values()]
    return markdown_table(header, rows, "l" + "r" * (len(header) - 1))


def reference_for(ours: Contender, contenders: Dict[str, Contender]) -> Optional[Contender]:
    """The smallest MobileNetV3-Small among the contenders with at least the MAdds of `ours`."""
    candidates = [c for c in contenders.values() if c.label.startswith("MobileNetV3") and c.madds >= ours.madds]
    return min(candidates, key=lambda c: c.madds) if candidates else None


def ratio_table(contenders: Dict[str, Contender], diffs: Dict[str, float], args) -> str:
    paddle_backends = [b for b in PADDLE_BACKENDS if b in args.backends]
    header = ["ours / reference"] + [f"ONNX Runtime bs{n}" for n in args.batches if "onnxruntime" in args.backends] + [
        f"best Paddle bs{n}" for n in args.batches if paddle_backends] + ["max logit diff"]
    rows = []
    for ours in (c for c in contenders.values() if c.label.endswith("(ours)")):
        references = [reference_for(ours, contenders), contenders.get(ours.label.replace("(ours)", "(PaddleClas)"))]
        for reference in (r for r in references if r is not None):
            cells = [f"{ours.label} / {reference.label}"]
            if "onnxruntime" in args.backends:
                cells += [f"{ours.median('onnxruntime', n) / reference.median('onnxruntime', n):.2f}" for n in args.batches]
            if paddle_backends:
                cells += [f"{ours.best_paddle(n) / reference.best_paddle(n):.2f}" for n in args.batches]
            same_model = reference.label.startswith(ours.label.split(" ")[0])
            cells.append(f"{diffs[ours.label]:.1e}" if same_model and ours.label in diffs else "-")
            rows.append(cells)
    return markdown_table(header, rows, "l" + "r" * (len(header) - 1))


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contenders", nargs="+", default=list(MICRONETS + MOBILENETS))
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--processes", type=int, default=3, help="fresh worker processes per contender and backend")
    parser.add_argument("--calls", type=int, default=30, help="timed calls per process and batch size")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--markdown", help="also write the tables to this file")
    args = parser.parse_args(argv)
    paddle.set_device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        contenders = prepare(args.contenders, tmp)
        diffs = measure(contenders, args)
    notes = [f"paddle {paddle.__version__}, onnxruntime {ort.__version__}, {args.threads} threads per backend, {SIZE} px; "
             f"latency: median over {args.processes} fresh processes of each one's median of {args.calls} calls "
             f"(after {args.warmup} warm-up calls)", "max logit diff: ours against PaddleClas's export of the same "
             "weights, both on ONNX Runtime"] + CPU_NOTES
    publish("\n".join([latency_table(contenders, args), "", ratio_table(contenders, diffs, args), ""]
                      + [f"- {note}" for note in notes]), args.markdown)


if __name__ == "__main__":
    main()
