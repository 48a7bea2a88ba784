"""The report of one quant_post_static run, beside the int8 model: `report.json` (every number) and `report.md`
(the same for people): calibration, the held-out images and whether they suffice, the budget, int8 against
float with every layer int8 and with the kept-in-float layers, the layer ranking, the latencies, the CPU."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional

from ..report import markdown_table
from .gate import Agreement
from .sensitivity import ranking_table
from .speed import has_vnni


def _percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def speed_verdict(latency, flags: Mapping[str, bool]) -> str:
    """One sentence on whether int8 pays off on this CPU."""
    if latency is None:
        return "not timed (timing: False)"
    vnni = "with VNNI" if has_vnni(flags) else "without VNNI (int8 dot products take several instructions)"
    if latency.int8_faster:
        return f"int8 is {1 / latency.ratio:.2f}x faster than float on this CPU ({vnni})"
    elsewhere = ("even with VNNI: at this model and image size the quantize/dequantize steps cost more than the int8 "
                 "arithmetic saves" if has_vnni(flags) else "try it on a CPU with VNNI or through TensorRT")
    return (f"int8 is SLOWER than float on this CPU ({vnni}): {latency.ratio:.2f}x the float time; serve the float model "
            f"here (backend auto does); {elsewhere}")


def as_json(facts: Mapping[str, Any]) -> Dict[str, Any]:
    data = facts["data"]
    settings = facts["config"]
    result: Agreement = facts["result"]
    latency = facts["latency"]
    ranking = facts["ranking"]
    return {
        "export": facts["export_dir"],
        "route": "ONNX Runtime quantize (QDQ), static calibration",
        "settings": settings,
        "calibration": {"source": data.source, "images": sum(len(b) for b in data.calibration),
                        "batch_size": settings["batch_size"], "batch_nums": settings["batch_nums"],
                        "fingerprint": facts["calibration_fingerprint"]},
        "holdout": {"images": result.images, "labels": data.labels is not None, "needed_to_decide": data.needed,
                    "decisive": result.images >= facts["budget"].images_to_decide()},
        "budget": facts["budget"].describe(),
        "layers": len(facts["layers"]),
        "every_layer_int8": facts["everything"].as_dict(),
        "result": result.as_dict(),
        "kept_in_float": [layer.describe() for layer in facts["kept"]],
        "float_limit": facts["limit"],
        "ranking": None if ranking is None else [{"layer": item.layer.describe(), "damage_mean_kl": item.damage}
                                                 for item in ranking],
        "search": None if facts["search"] is None else [{"kept_in_float": count, **agreement.as_dict()}
                                                        for count, agreement in facts["search"].tried],
        "latency": None if latency is None else {"batch_shape": list(latency.shape), "threads": latency.threads,
                                                 "float_ms": latency.float_ms, "int8_ms": latency.int8_ms,
                                                 "int8_over_float": latency.ratio},
        "speed_verdict": speed_verdict(latency, facts["flags"]),
        "cpu": {"name": facts["cpu"], "flags": facts["flags"], "vnni": has_vnni(facts["flags"])},
    }


def _agreement_rows(rows: List[tuple]) -> str:
    return markdown_table(["int8 model", "held-out images", "top-1 agreement", "mean KL", "float top-1", "int8 top-1",
                           "float top-5", "int8 top-5"],
                          ([name, a.images, _percent(a.top1_agreement), f"{a.mean_kl:.3g}", _percent(a.float_top1),
                            _percent(a.int8_top1), _percent(a.float_top5), _percent(a.int8_top5)] for name, a in rows),
                          "lrrrrrrr")


def as_markdown(report: Mapping[str, Any], facts: Mapping[str, Any]) -> str:
    holdout = report["holdout"]
    lines = [f"# int8 report: {report['export']}", "",
             f"Route: {report['route']}; weights int8 {'per channel' if report['settings']['per_channel'] else 'per tensor'}"
             f"{' (7-bit: reduce_range)' if report['settings']['reduce_range'] else ''}, activations uint8, "
             f"operators {', '.join(report['settings']['op_types'])}, calibration {report['settings']['calibrate_method']}.",
             "",
             f"Calibration: the first {report['calibration']['images']} images of {report['calibration']['source']} "
             f"({report['calibration']['batch_nums']} x {report['calibration']['batch_size']}; data SHA-256 "
             f"{report['calibration']['fingerprint'][:16]}...).",
             f"Held out (never calibrated on): the next {holdout['images']} images, "
             f"{'with their labels' if holdout['labels'] else 'without labels'}.", ""]
    if not holdout["decisive"]:
        lines += [f"**Warning: {holdout['images']} held-out images are too few to decide the budget** ({report['budget']}: "
                  f"one disagreement needs {facts['budget'].images_to_decide()} images to show); the agreement below is weak "
                  "evidence.", ""]
    rows = [("every layer int8", facts["everything"])]
    if facts["kept"]:
        rows.append((f"{len(facts['kept'])} layers kept in float", facts["result"]))
    lines += [f"Budget: {report['budget']}. Quantizable layers: {report['layers']}; at most {report['float_limit']} may stay "
              "float.", "", _agreement_rows(rows), ""]
    lines += ["## Kept in float", ""]
    lines += [f"- {name}" for name in report["kept_in_float"]] or ["none: every layer is int8"]
    if facts["ranking"] is not None:
        lines += ["", "## Layer ranking (damage of quantizing only that layer, on calibration images)", "",
                  markdown_table(["rank", "layer", "damage (mean KL)", "kept in float"],
                                 ranking_table(facts["ranking"], facts["kept"]), "llrl")]
    lines += ["", "## Speed (each model alone in its own process, ONNX Runtime)", ""]
    latency = report["latency"]
    if latency is not None:
        lines += [markdown_table(["batch", "threads", "float ms", "int8 ms", "int8 / float"],
                                 [["x".join(map(str, latency["batch_shape"])), latency["threads"], f"{latency['float_ms']:.2f}",
                                   f"{latency['int8_ms']:.2f}", f"{latency['int8_over_float']:.2f}"]], "lrrrr"), ""]
    flags = ", ".join(f"{name} {'yes' if present else 'no'}" for name, present in report["cpu"]["flags"].items())
    lines += [f"{report['speed_verdict']}.", "", f"CPU: {report['cpu']['name']}; {flags}."]
    return "\n".join(lines) + "\n"


def write_reports(folder: str, facts: Mapping[str, Any]) -> None:
    report = as_json(facts)
    with open(os.path.join(folder, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, default=float)
    with open(os.path.join(folder, "report.md"), "w", encoding="utf-8") as f:
        f.write(as_markdown(report, facts))
