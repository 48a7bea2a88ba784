"""python tools/make_configs.py [--check]  (see ppcls_ext.cli.make_configs): writes configs/ImageNet/<family>/<model>.yaml
from each family's model declarations and recipe template; --check lists the configs that are out of date."""
from ppcls_ext.cli.make_configs import main

if __name__ == "__main__":
    raise SystemExit(main())
