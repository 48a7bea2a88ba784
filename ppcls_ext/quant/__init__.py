"""Post-training int8 quantization, PaddleClas's `deploy/slim/quant_post_static.py` (`post_static`): ONNX Runtime's
static quantization of an export, an accuracy gate on held-out images, per-layer sensitivity, honest timing. It
uses the engine (to export first, when asked) and the deployment package (its backends serve the result);
the calibration images it reads come from `ppcls_ext.data.calibration`, which TensorRT's int8 calibration reads
too. Its command line is `ppcls_ext.cli.quant_post_static`."""
