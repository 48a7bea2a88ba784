"""Verify a GPU installation of PaddlePaddle with ppcls_ext: AMP training, channels-last throughput,
SyncBatchNorm, Paddle Inference and TensorRT against the dygraph model; prints one table.

    python tools/gpu_check.py
    python tools/gpu_check.py --models MicroNet_M3,EfficientNetB1 --batch 32
"""
import sys

from ppcls_ext.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
