"""`tools/convert_weights.py SRC -m MODEL -o OUT.pdparams`: a PyTorch / safetensors checkpoint (or a
.pdparams) as a `.pdparams` of ours, checked by loading it back."""
from __future__ import annotations

import argparse
import os
from typing import List, Optional

import numpy as np
import paddle

from ..errors import REPORTED
from ..output_paths import replaced_atomically
from ..registry import create_model
from ..weights import IncompatibleWeightsError, model_numerics, numerics_record, read_weights_file
from .boundary import report


def _save_atomically(state: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with replaced_atomically(path, "-o") as temporary:
        paddle.save(state, temporary)


def convert(source: str, model_name: str, output: str, origin: Optional[str] = None, class_num: int = 1000,
            sha256: Optional[str] = None) -> str:
    """Load `source` into `model_name` (built with the numerics its weights were trained with), save it as
    `output`, recording those numerics (`NUMERICS_KEY`) so that `create_model(model_name, pretrained=output)`
    builds the model alike, and check that the saved file gives the same logits. Returns a summary line."""
    weights = read_weights_file(source, sha256=sha256, origin=origin)
    model = create_model(model_name, class_num=class_num, pretrained=weights)
    _save_atomically({**model.state_dict(), **numerics_record(model, os.path.basename(source))}, output)
    model.eval()
    reloaded = create_model(model_name, class_num=class_num, pretrained=output)
    reloaded.eval()
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype("float32"))
    with paddle.no_grad():
        difference = float(np.abs(model(x).numpy() - reloaded(x).numpy()).max())
    if difference > 1e-5:
        os.remove(output)
        raise IncompatibleWeightsError(f"{output}: reloaded logits differ by {difference:.3g}; file removed")
    numerics = model_numerics(model)
    recorded = f", {numerics.describe()} (recorded in the file)" if numerics is not None else ""
    return f"wrote {output}: {model_name} from {weights.label}{recorded}; reloaded logits identical"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="checkpoint: .pth/.pt/.bin (PyTorch, zip or legacy), .safetensors or .pdparams; or a URL")
    parser.add_argument("-m", "--model", required=True, help="our model name, e.g. EfficientNetB0, EfficientNetLite0")
    parser.add_argument("-o", "--output", required=True, help="the .pdparams to write")
    parser.add_argument("--origin", help="source model name where the layout needs it, e.g. timm's tf_efficientnet_b0")
    parser.add_argument("--class-num", type=int, default=1000, help="classes of the model (another count skips the head)")
    parser.add_argument("--sha256", help="the SHA-256 the source file must have (a download is refused otherwise)")
    args = parser.parse_args(argv)
    try:
        print(convert(args.source, args.model, args.output, args.origin, args.class_num, args.sha256))
    except REPORTED + (ValueError,) as error:  # a ValueError: create_model refusing an option (--class-num -1)
        return report(error)
    return 0
