"""Verify a GPU installation of PaddlePaddle with ppcls_ext: AMP training, channels-last throughput, real
Engine runs with a resume, SyncBatchNorm, Paddle Inference and TensorRT (int8 calibrated on real photos)
against the dygraph model; prints one table (docs/tensorrt.md lists the checks and exit statuses).

    python tools/gpu_check.py
    python tools/gpu_check.py --models MicroNet_M3,EfficientNetB1 --batch 32
    python tools/gpu_check.py --skip syncbn          # one GPU; --only engine,trt-int8 to run just those
"""
import sys

from ppcls_ext.cli.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
