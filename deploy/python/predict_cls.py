"""python deploy/python/predict_cls.py -c deploy/configs/inference_cls.yaml [-o KEY.PATH=VALUE ...] [--json PATH]"""
from ppcls_ext.cli.predict_cls import main

if __name__ == "__main__":
    raise SystemExit(main())
