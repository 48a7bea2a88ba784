"""Size and cost of the zoo's models, as a markdown table (the README's model table)."""
from __future__ import annotations

import contextlib
import io
from typing import Dict, Iterable, List, Optional

import paddle

from .registry import create_model, get_model_config
from .report import markdown_table


def model_summary(name: str, flops: bool = True) -> Dict[str, object]:
    """Learnable parameters and (optionally) paddle.flops at the model's evaluation size."""
    config = get_model_config(name)
    model = create_model(name)
    model.eval()
    row: Dict[str, object] = {
        "name": name,
        "params": sum(int(p.size) for p in model.parameters() if not p.stop_gradient),
        "train_size": config.train_size,
        "eval_size": config.eval_size,
        "top1": config.paper_top1,
        "weights": config.weights_url is not None,
        "flops": None,
    }
    if flops:
        with contextlib.redirect_stdout(io.StringIO()), paddle.no_grad():
            row["flops"] = paddle.flops(model, [1, 3, config.eval_size, config.eval_size])
    return row


def _flops(value: Optional[int]) -> str:
    if value is None:
        return "-"
    return f"{value / 1e9:.2f}G" if value >= 1e9 else f"{value / 1e6:.1f}M"


def zoo_markdown(rows: Iterable[Dict[str, object]]) -> str:
    header = ["model", "params", "FLOPs (eval size)", "train / eval size", "paper top-1", "official weights"]
    return markdown_table(header, ([row["name"], f"{row['params'] / 1e6:.2f}M", _flops(row["flops"]),
                                    f"{row['train_size']} / {row['eval_size']}", row["top1"],
                                    "yes" if row["weights"] else "-"] for row in rows), "lrrrrc")


def zoo_table(names: List[str], flops: bool = True) -> str:
    return zoo_markdown(model_summary(name, flops=flops) for name in names)
