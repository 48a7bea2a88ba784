"""Serving exports of tools/export_model.py: Paddle Inference (CPU, GPU, TensorRT) and ONNX Runtime."""
from .classifier import DeployedClassifier, create_predictor, fastest_backend, read_description
from .onnx_backend import OnnxPredictor, export_onnx
from .options import DeploymentError, InferenceOptions, TensorRTOptions, options_from_config
from .paddle_backend import PaddlePredictor

__all__ = ["DeployedClassifier", "DeploymentError", "InferenceOptions", "OnnxPredictor", "PaddlePredictor",
           "TensorRTOptions", "create_predictor", "export_onnx", "fastest_backend", "options_from_config",
           "read_description"]
