"""The accuracy gate's arithmetic against hand-computed values, the search for layers to keep in float against a
synthetic model of damage, and the int8 model's place among backend auto's candidates."""
import os
import shutil

import numpy as np
import pytest
import yaml

from ppcls_ext.inference import InferenceOptions
from ppcls_ext.inference import classifier as classifier_module
from ppcls_ext.inference.int8_model import INT8_FILE
from ppcls_ext.quant.gate import Agreement, Budget, compare, mean_kl
from ppcls_ext.quant.onnx_int8 import Layer
from ppcls_ext.quant.sensitivity import Ranked, float_limit, keep_worst_in_float


def test_compare_counts_agreement_accuracies_and_kl_by_hand():
    fp32 = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4], [0.5, 0.25, 0.25]])
    int8 = np.array([[0.6, 0.3, 0.1], [0.1, 0.3, 0.6], [0.2, 0.3, 0.5], [0.5, 0.25, 0.25]])
    result = compare(fp32, int8, [0, 2, 2, 1])
    assert result.images == 4 and result.top1_agreement == 0.75  # the second image flips from 1 to 2
    assert (result.float_top1, result.int8_top1) == (0.5, 0.75)  # float right on 0 and 2; int8 on 0, 1, 2
    assert result.top1_drop == -0.25
    kl = (0.7 * np.log(0.7 / 0.6) + 0.2 * np.log(0.2 / 0.3) + 0.6 * np.log(0.6 / 0.3) + 0.3 * np.log(0.3 / 0.6)
          + 0.3 * np.log(0.3 / 0.2) + 0.4 * np.log(0.4 / 0.5)) / 4
    assert result.mean_kl == pytest.approx(kl) and mean_kl(fp32, fp32) == 0.0
    assert compare(fp32, int8).float_top1 is None


def test_budget_names_what_it_misses_and_how_many_images_decide_it():
    budget = Budget(min_agreement=0.99, max_top1_drop=0.01, max_kl=0.05)
    result = Agreement(200, 0.985, 0.08, 0.9, 0.95, 0.885, 0.95)
    assert budget.misses(result) == ["top-1 agreement 98.50% < 99.00%", "top-1 drop 1.50 > 1.00 points", "mean KL 0.08 > 0.05"]
    assert budget.misses(Agreement(200, 0.995, 0.01, 0.9, 0.95, 0.895, 0.95)) == []
    assert Budget(0.99).images_to_decide() == 100 and Budget(0.995).images_to_decide() == 200 and Budget(1.0).images_to_decide() == 1
    assert float_limit(None, 50) == 12 and float_limit(3, 50) == 3 and float_limit(80, 50) == 50


def ranking(count):
    return [Ranked(Layer(f"Conv.{i}", "Conv", f"w{i}"), 1.0 / (i + 1)) for i in range(count)]


@pytest.mark.parametrize("needed", [1, 3, 5, 8])
def test_the_search_keeps_the_fewest_worst_layers_that_hold_the_budget(needed):
    """Synthetic model: the budget holds once the `needed` worst layers are float."""
    asked = []

    def evaluate(excluded):
        asked.append(len(excluded))
        held = excluded == [f"Conv.{i}" for i in range(len(excluded))] and len(excluded) >= needed
        return Agreement(100, 1.0 if held else 0.9, 0.0)

    search = keep_worst_in_float(ranking(20), Budget(0.99), 10, evaluate)
    assert search.held and [layer.name for layer in search.kept] == [f"Conv.{i}" for i in range(needed)]
    assert len(asked) <= 2 * int(np.ceil(np.log2(10))) + 1


def test_the_search_gives_up_at_the_limit():
    search = keep_worst_in_float(ranking(20), Budget(0.99), 5, lambda excluded: Agreement(100, 0.5, 1.0))
    assert not search.held and len(search.kept) == 5 and [count for count, _ in search.tried] == [1, 2, 4, 5]
    assert keep_worst_in_float(ranking(20), Budget(0.99), 0, lambda excluded: 1 / 0).result is None


def test_backend_auto_measures_an_accepted_int8_model_and_keeps_the_faster(digits_export, tmp_path, monkeypatch, engine_log):
    folder = tmp_path / "int8"
    shutil.copytree(digits_export, folder)
    shutil.copy(os.path.join(folder, "inference.pdiparams"), folder / INT8_FILE)  # never loaded: timing is faked
    description = yaml.safe_load((folder / "inference.yml").read_text())
    asked = []

    def fake_timing(model_dir, options, names, shape):
        asked.append(list(names))
        return {name: [speeds[name]] * 3 for name in names}

    monkeypatch.setattr(classifier_module, "time_candidates", fake_timing)
    monkeypatch.setattr(classifier_module, "build_cpu_predictor", lambda model_dir, name, options: name)
    options = InferenceOptions(backend="auto", cpu_threads=1)
    speeds = {"paddle-cpu": 0.004, "paddle-cpu-onednn": 0.009, "onnxruntime": 0.002, "onnxruntime-int8": 0.003}
    for accepted in (None, False):  # no Int8 section, or one not accepted by the gate: not a candidate
        if accepted is not None:
            (folder / "inference.yml").write_text(yaml.safe_dump({**description, "Int8": {"model_file": INT8_FILE, "accepted": False}}))
        assert classifier_module.create_predictor(str(folder), options, (3, 32, 32)) == "onnxruntime"
        assert "onnxruntime-int8" not in asked[-1]
    (folder / "inference.yml").write_text(yaml.safe_dump({**description, "Int8": {"model_file": INT8_FILE, "accepted": True}}))
    assert classifier_module.create_predictor(str(folder), options, (3, 32, 32)) == "onnxruntime"  # int8 slower here
    assert asked[-1] == ["paddle-cpu", "paddle-cpu-onednn", "onnxruntime", "onnxruntime-int8"]
    speeds["onnxruntime-int8"] = 0.001
    assert classifier_module.create_predictor(str(folder), options, (3, 32, 32)) == "onnxruntime-int8"
    # any other CPU backend serves the int8 model the folder is for
    assert classifier_module.create_predictor(str(folder), InferenceOptions(cpu_threads=1), (3, 32, 32)) == "onnxruntime-int8"
