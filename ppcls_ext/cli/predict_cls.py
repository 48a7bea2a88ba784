"""deploy/python/predict_cls.py: classify images with an export, PaddleClas-style (`-c` deploy config,
`-o` overrides), printing PaddleClas's result dict per image (and JSON with --json)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Dict, List, Mapping, Optional

from ..config import boolean, check_sections, check_values, closest, integer, load_config, section
from ..errors import REPORTED
from ..inference.classifier import DeployedClassifier
from ..inference.options import options_from_config
from ..interrupts import Interrupted, signal_name, stop_on_signals
from ..output_paths import check_writable_file, write_file_atomically
from ..serving.predict import collect_images
from .boundary import report, report_failures

logger = logging.getLogger("ppcls_ext")

SECTIONS = ("Global", "PreProcess", "PostProcess")
# Global keys of PaddleClas's deploy configs and ours, with checks of their values
GLOBAL_VALUES = {"batch_size": integer(1), "cpu_num_threads": integer(1, optional=True), "gpu_mem": integer(1),
                 "gpu_id": integer(0), "use_gpu": boolean, "enable_mkldnn": boolean, "use_fp16": boolean,
                 "use_int8": boolean, "use_tensorrt": boolean, "ir_optim": boolean, "use_onnx": boolean,
                 "enable_benchmark": boolean, "enable_profile": boolean, "cpu_spin_wait": boolean}
GLOBAL_KEYS = set(GLOBAL_VALUES) | {"infer_imgs", "inference_model_dir", "backend", "tensorrt", "model_name",
                                    "save_log_path", "benchmark", "use_npu", "use_xpu", "use_mlu"}


def check_deploy_config(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The `Global` section of a deploy config, after checking sections, keys (unknown ones logged)
    and values."""
    check_sections(config, SECTIONS, where="the deploy config")
    glob = section(config, "Global")
    for key in glob:
        if key not in GLOBAL_KEYS:
            near = closest(key, GLOBAL_KEYS, cutoff=0.75)
            logger.warning("Global.%s is not a known key%s; it has no effect", key, f" (did you mean {near}?)" if near else "")
    check_values(glob, GLOBAL_VALUES, "Global")
    return glob


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Classify images with an exported model (Paddle Inference or ONNX Runtime).")
    parser.add_argument("-c", "--config", required=True, help="deploy config, e.g. deploy/configs/inference_cls.yaml")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY.PATH=VALUE")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH ('-' prints JSON only)")
    args = parser.parse_args(argv)
    with stop_on_signals():
        try:
            results = classify(args)
        except Interrupted as stop:
            print(f"interrupted by {signal_name(stop.signum)}", file=sys.stderr)
            return stop.exit_status
        except REPORTED as error:
            return report(error)
    return report_failures(results)


def classify(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """Classify the deploy config's images with its export, printing (and with --json writing) the results."""
    if args.json not in (None, "-"):
        check_writable_file(args.json, "--json")
    config = load_config(args.config, args.override)
    glob = check_deploy_config(config)
    topk = (config.get("PostProcess") or {}).get("Topk") or {}
    classifier = DeployedClassifier(
        section(glob, "inference_model_dir"), options_from_config(glob), batch_size=glob.get("batch_size", 1),
        topk=topk.get("topk"), class_id_map_file=topk.get("class_id_map_file"),
        preprocess=(config.get("PreProcess") or {}).get("transform_ops"))
    files = collect_images(section(glob, "infer_imgs"))
    results = []
    for result in classifier.classify(files):
        results.append(result)
        if args.json != "-":
            print(result, flush=True)
    if args.json == "-":
        print(json.dumps(results, ensure_ascii=False, indent=2))
    elif args.json:
        write_file_atomically(args.json, json.dumps(results, ensure_ascii=False, indent=2), "--json")
    return results
