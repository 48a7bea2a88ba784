"""Serving a classifier, shared by training (`engine`: tools/infer.py, tools/export_model.py) and deployment
(`inference`: deploy/python/predict_cls.py): the Paddle Inference export and its inference.yml (`export`),
classification of image files in PaddleClas's result format (`predict`), top-k with class names
(`postprocess`), and the infer / export modes of a training config applied to a dygraph model (`modes`).
It imports neither the engine nor the deployment package; both import it. Submodules are imported by name."""
