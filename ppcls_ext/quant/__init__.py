"""Post-training int8 quantization: calibration images (`calibration`, shared with TensorRT's int8
calibration), and PaddleClas's `deploy/slim/quant_post_static.py`. Submodules are imported by name, so that
deployment code reading calibration images loads nothing of the quantizer."""
