"""deploy/python/predict_cls.py: classify images with an export, PaddleClas-style (`-c` deploy config,
`-o` overrides), printing PaddleClas's result dict per image (and JSON with --json)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from ..cli import USER_ERRORS
from ..config import load_config, section
from ..engine.predict import collect_images
from .classifier import DeployedClassifier
from .options import DeploymentError, options_from_config


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Classify images with an exported model (Paddle Inference or ONNX Runtime).")
    parser.add_argument("-c", "--config", required=True, help="deploy config, e.g. deploy/configs/inference_cls.yaml")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY.PATH=VALUE")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH ('-' prints JSON only)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.override)
        glob = section(config, "Global")
        topk = (config.get("PostProcess") or {}).get("Topk") or {}
        classifier = DeployedClassifier(
            section(glob, "inference_model_dir"), options_from_config(glob), batch_size=int(glob.get("batch_size", 1)),
            topk=topk.get("topk"), class_id_map_file=topk.get("class_id_map_file"),
            preprocess=(config.get("PreProcess") or {}).get("transform_ops"))
        files = collect_images(section(glob, "infer_imgs"))
        results = []
        for result in classifier.classify(files):
            results.append(result)
            if args.json != "-":
                print(result, flush=True)
    except USER_ERRORS + (DeploymentError,) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json == "-":
        print(json.dumps(results, ensure_ascii=False, indent=2))
    elif args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, ensure_ascii=False, indent=2)
    return 0
