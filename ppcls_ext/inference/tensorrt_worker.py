"""Child process of the PIR TensorRT conversion: `python -m ppcls_ext.inference.tensorrt_worker REQUEST.json`.

It runs `paddle.tensorrt.convert` where the parent chose the GPU (through CUDA_VISIBLE_DEVICES), and keeps
the converter's process-wide state (static mode, global scope, `FLAGS_trt_min_group_size`) out of the
serving process. The request names the export prefix, the save prefix, the precision and the explicit
min/opt/max shapes. Exit status 2 with one line when this Paddle has no `paddle.tensorrt`.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Dict, List


def convert(request: Dict[str, object]) -> None:
    """Convert `request["model"]` (an export prefix) into `request["save"]` with paddle.tensorrt."""
    from paddle.tensorrt.export import Input, PrecisionMode, TensorRTConfig, convert as trt_convert

    low, opt, high = (tuple(int(d) for d in shape) for shape in request["shapes"])
    inputs = [Input(min_input_shape=low, optim_input_shape=opt, max_input_shape=high)]
    config = TensorRTConfig(inputs=inputs, min_subgraph_size=int(request["min_subgraph_size"]),
                            save_model_dir=str(request["save"]),
                            precision_mode=PrecisionMode[str(request["precision"]).upper()],
                            workspace_size=int(request["workspace_size"]))
    trt_convert(str(request["model"]), config)
    for suffix in (".json", ".pdiparams"):
        if not os.path.isfile(str(request["save"]) + suffix):
            raise RuntimeError(f"paddle.tensorrt.convert wrote no {request['save']}{suffix}")


def main(argv: List[str]) -> int:
    with open(argv[0], encoding="utf-8") as f:
        request = json.load(f)
    try:
        import paddle.tensorrt.export  # noqa: F401  (absent from CPU builds and builds without TensorRT)
    except ImportError as error:
        print(f"this PaddlePaddle has no paddle.tensorrt (PIR TensorRT needs Paddle >= 3.0 built with TensorRT "
              f"and the tensorrt Python package): {error}", file=sys.stderr)
        return 2
    convert(request)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
