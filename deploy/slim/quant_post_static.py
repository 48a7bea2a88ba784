"""python deploy/slim/quant_post_static.py -c CONFIG -o Global.save_inference_dir=EXPORT_DIR [-o ...]  (docs/int8.md)"""
from ppcls_ext.cli.quant_post_static import main

if __name__ == "__main__":
    raise SystemExit(main())
