"""PaddleClas's own `build_model` (and weight loader) builds our models after `import ppcls_ext`, in
either import order, from the wheel layout and from a source checkout."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

import ppcls_ext
from ppcls_ext.paddleclas_plugin import paddleclas_original
from ppcls_ext.weights import randomize_

REPO = Path(__file__).resolve().parents[1]

BUILD_EVERY_NAME = """
import json, paddle
{imports}
names = ppcls_ext.list_models()
result = {{}}
with paddle.LazyGuard():  # parameters stay unallocated: this checks names and structure, fast
    for name in names:
        model = build_model({{"Arch": {{"name": name, "class_num": 10}}, "Global": {{"device": "cpu"}}}})
        result[name] = [type(model).__module__, list(model.classifier.parameters())[0].shape[-1]]
    rec = build_model({{"Arch": {{"name": "RecModel", "Backbone": {{"name": "EfficientNetV2_B0", "class_num": 0}}}},
                       "Global": {{"device": "cpu"}}}})
    result["RecModel.backbone"] = [type(rec.backbone).__module__, 0]
print("RESULT" + json.dumps(result))
"""


def run_python(code: str, pythonpath: str = "") -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (pythonpath, str(REPO)) if p))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


def check_all_ours(result: dict) -> None:
    assert set(result) == set(ppcls_ext.list_models()) | {"RecModel.backbone"}
    for name, (module, classes) in result.items():
        assert module.startswith("ppcls_ext.models."), (name, module)
        assert classes in (10, 0), name


@pytest.mark.parametrize("order", ["ppcls_ext first", "paddleclas first"])
def test_build_model_from_the_wheel_builds_ours_for_every_name(order):
    imports = ("import ppcls_ext\nfrom paddleclas.ppcls.arch import build_model" if order == "ppcls_ext first"
               else "from paddleclas.ppcls.arch import build_model\nimport ppcls_ext")
    check_all_ours(run_python(BUILD_EVERY_NAME.format(imports=imports)))


def test_build_model_from_a_source_checkout_builds_ours(tmp_path):
    """A PaddleClas source checkout imports as `ppcls`; emulate one with the wheel's package."""
    import paddleclas

    (tmp_path / "ppcls").symlink_to(Path(paddleclas.__file__).parent / "ppcls", target_is_directory=True)
    imports = "import ppcls_ext\nfrom ppcls.arch import build_model"
    check_all_ours(run_python(BUILD_EVERY_NAME.format(imports=imports), pythonpath=str(tmp_path)))


def test_paddleclas_loader_puts_official_layout_weights_into_our_model(tmp_path):
    """PaddleClas's engine loads `Global.pretrained_model` with load_dygraph_pretrain (-> set_dict)."""
    from paddleclas.ppcls.arch import build_model
    from paddleclas.ppcls.utils.save_load import load_dygraph_pretrain

    theirs = paddleclas_original("EfficientNetB0")
    theirs.set_state_dict(randomize_(theirs.state_dict(), seed=11))
    paddle.save(theirs.state_dict(), str(tmp_path / "EfficientNetB0_pretrained.pdparams"))
    ours = build_model({"Arch": {"name": "EfficientNetB0", "class_num": 1000}, "Global": {"device": "cpu"}})
    assert isinstance(ours, ppcls_ext.ImageClassifier)
    load_dygraph_pretrain(ours, str(tmp_path / "EfficientNetB0_pretrained"))
    ours.eval()
    x = paddle.randn([1, 3, 224, 224])
    np.testing.assert_allclose(ours(x).numpy(), theirs(x).numpy(), atol=1e-5)
    # Arch keywords of PaddleClas configs pass through build_model
    loaded = build_model({"Arch": {"name": "EfficientNetB0", "class_num": 1000,
                                   "pretrained": str(tmp_path / "EfficientNetB0_pretrained.pdparams")}})
    loaded.eval()
    np.testing.assert_allclose(loaded(x).numpy(), theirs(x).numpy(), atol=1e-5)
    symmetric = build_model({"Arch": {"name": "EfficientNetB0", "padding_type": "DYNAMIC"}})
    weight = symmetric.stem.conv.weight
    np.testing.assert_allclose(symmetric.stem.conv(x).numpy(), F.conv2d(x, weight, stride=2, padding=1).numpy(), atol=1e-5)


def test_schedules_paddleclas_lacks_are_added_to_its_learning_rate_module():
    """PaddleClas's build_lr_scheduler calls getattr(learning_rate, name)(epochs=, step_each_epoch=, **Optimizer.lr)
    and steps the result every iteration (once per epoch when it has by_epoch set). Our configs' Exponential
    (x gamma every decay_epochs, after a linear warmup) is added; PaddleClas's own schedules are kept."""
    import types

    from ppcls_ext.paddleclas_plugin import register_schedules

    module = types.ModuleType("learning_rate")
    module.Cosine = own = object()
    register_schedules(module)
    assert module.Cosine is own and callable(module.Exponential)
    config = {"learning_rate": 0.1, "gamma": 0.5, "decay_epochs": 1.5, "warmup_epoch": 1}
    per_step = module.Exponential(epochs=6, step_each_epoch=4, **config)
    assert per_step.by_epoch is False
    values = []
    for _ in range(16):
        values.append(per_step.get_lr())
        per_step.step()
    # warmup 0 -> 0.1 over 4 steps, then 0.1 * 0.5 ** floor((t - 4) / 6)
    expected = [0.1 * t / 4 for t in range(4)] + [0.1 * 0.5 ** ((t - 4) // 6) for t in range(4, 16)]
    np.testing.assert_allclose(values, expected, rtol=1e-12)
    per_epoch = module.Exponential(epochs=6, step_each_epoch=4, by_epoch=True, **config)
    values = []
    for _ in range(5):
        values.append(per_epoch.get_lr())
        per_epoch.step()
    assert per_epoch.by_epoch is True
    # counted in epochs: warmup epoch 0, then 0.1 * 0.5 ** floor((epoch - 1) / 1.5)
    np.testing.assert_allclose(values, [0.0, 0.1, 0.1, 0.05, 0.025], rtol=1e-12)
