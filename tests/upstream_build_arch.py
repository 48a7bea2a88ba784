"""python tests/upstream_build_arch.py PADDLECLAS_DIR -c CONFIG [-o KEY=VALUE ...]

Build a config's `Arch` with PaddleClas's own `build_model` (from the source checkout PADDLECLAS_DIR),
parameters left unallocated (`paddle.LazyGuard`), and fail unless the model is ours: checks the models too
large to train in a test run (EfficientNetL2 alone needs more memory than a 24 GB machine) reach PaddleClas.
"""
import sys

import paddle


def main():
    sys.path.append(sys.argv.pop(1))
    from ppcls.arch import build_model
    from ppcls.utils import config as ppcls_config

    args = ppcls_config.parse_args()
    config = ppcls_config.get_config(args.config, overrides=args.override, show=False)
    with paddle.LazyGuard():
        model = build_model(config)
    built = f"{type(model).__module__}.{type(model).__name__}"
    if not built.startswith("ppcls_ext."):
        raise SystemExit(f"{config['Arch']['name']}: PaddleClas built {built}, not ppcls_ext's model")
    print(f"{config['Arch']['name']}: {built}, {sum(p.size for p in model.parameters())} parameters (unallocated)")


if __name__ == "__main__":
    main()
