"""PaddleClas-format configs: YAML loading, `-o` overrides, and errors that name the key; the values and
sections checked at start-up, through the tools (exit status 2, one line, no traceback)."""
import os
import re

import pytest

from conftest import quick_argv, run_main
from ppcls_ext import cli
from ppcls_ext.config import (ConfigError, apply_override, boolean, check_sections, closest, int_list, integer,
                              load_config, number, parse_value, section)

CONFIG = """
Global:
  epochs: 10
  output_dir: ./output/
Optimizer:
  name: Momentum
  regularizer:
    name: L2
    coeff: 4e-5
DataLoader:
  Train:
    dataset:
      transform_ops:
        - DecodeImage:
            to_rgb: True
        - RandCropImage:
            size: 224
        - NormalizeImage:
            scale: 1.0/255.0
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return str(path)


def test_strings_are_read_as_python_literals_like_paddleclas(config_file):
    config = load_config(config_file)
    assert config["Optimizer"]["regularizer"]["coeff"] == 4e-5  # YAML alone reads "4e-5" as a string
    assert config["DataLoader"]["Train"]["dataset"]["transform_ops"][2]["NormalizeImage"]["scale"] == "1.0/255.0"
    assert config["Optimizer"]["name"] == "Momentum"


def test_overrides_reach_nested_keys_and_list_items(config_file):
    config = load_config(config_file, [
        "Global.epochs=3",
        "DataLoader.Train.dataset.transform_ops.1.RandCropImage.size=128",
        "Global.pretrained_model=./output/best_model",
        "Global.image_shape=[3, 64, 64]",
        "Global.use_visualdl=True",
        "Global.checkpoints=null",
        "Arch.name=MicroNet_M0",
        "Optimizer.lr.learning_rate=1e-3",
    ])
    assert config["Global"]["epochs"] == 3
    assert config["DataLoader"]["Train"]["dataset"]["transform_ops"][1]["RandCropImage"]["size"] == 128
    assert config["Global"]["pretrained_model"] == "./output/best_model"
    assert config["Global"]["image_shape"] == [3, 64, 64]
    assert config["Global"]["use_visualdl"] is True and config["Global"]["checkpoints"] is None
    assert config["Arch"] == {"name": "MicroNet_M0"}  # new sections are created, as in PaddleClas
    assert config["Optimizer"]["lr"]["learning_rate"] == 1e-3


@pytest.mark.parametrize("option,message", [
    ("Global.epochs", r"-o 'Global.epochs': expected KEY.PATH=VALUE"),
    ("Global..epochs=3", r"empty key in 'Global..epochs'"),
    ("DataLoader.Train.dataset.transform_ops.7.RandCropImage.size=1",
     r"index 7 out of range for DataLoader.Train.dataset.transform_ops \(length 3\)"),
    ("DataLoader.Train.dataset.transform_ops.first.size=1", r"transform_ops is a list; 'first' is not an index"),
    ("Global.epochs.value=1", r"Global.epochs is a value \(10\), not a section or list"),
])
def test_malformed_overrides_are_clear_errors(config_file, option, message):
    with pytest.raises(ConfigError, match=message):
        load_config(config_file, [option])


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*missing\.yaml"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("Global: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml is not valid YAML"):
        load_config(str(bad))
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_config(str(scalar))


def test_section_names_the_missing_path():
    assert section({"A": {"b": 1}}, "A.b") == 1
    assert section({"A": {}}, "A.c", required=False, default=5) == 5
    with pytest.raises(ConfigError, match=r"missing 'Optimizer.lr' \(no 'lr' under Optimizer\)"):
        section({"Optimizer": {"name": "SGD"}}, "Optimizer.lr")


def test_parse_value():
    assert parse_value("0.1") == 0.1 and parse_value("5e-5") == 5e-5 and parse_value("[1, 2]") == [1, 2]
    assert parse_value("True") is True and parse_value("null") is None and parse_value("bilinear") == "bilinear"
    assert parse_value("") == "" and parse_value("a=b") == "a=b"
    config = {"x": [1, 2]}
    apply_override(config, "x.-1=7")
    assert config == {"x": [1, 7]}


# --- config values and sections (checked at start-up; through the tools: exit status 2, one line) -----


def test_value_checks_accept_only_the_kind_named():
    assert integer(1)(3, "Global.epochs") == 3 and integer(optional=True)(None, "Global.seed") is None
    for value in ("abc", 0, -1, 1.5, 2.0, True, None, "3"):
        with pytest.raises(ConfigError, match=rf"^Global.epochs must be an integer >= 1, got {re.escape(repr(value))}$"):
            integer(1)(value, "Global.epochs")
    with pytest.raises(ConfigError, match=r"^Global.seed must be an integer >= 0 and <= 9 or null, got -1$"):
        integer(0, 9, optional=True)(-1, "Global.seed")
    assert number(0, 1)(0.5, "EMA.decay") == 0.5 and number(0)(3, "Optimizer.momentum") == 3
    for value in ("abc", True, 1.5, None):
        with pytest.raises(ConfigError, match=rf"^EMA.decay must be a number >= 0 and <= 1, got {re.escape(repr(value))}$"):
            number(0, 1)(value, "EMA.decay")
    assert boolean(False, "Global.use_visualdl") is False
    for value in ("flase", "false", 1, None):
        with pytest.raises(ConfigError, match=rf"^Global.use_visualdl must be True or False, got {re.escape(repr(value))}$"):
            boolean(value, "Global.use_visualdl")
    assert int_list(3)([3, 32, 32], "Global.image_shape") == [3, 32, 32] and int_list(3)(None, "x") is None
    for value in ([3, 32], [3, 0, 32], "3,32,32", [3, 32.0, 32]):
        with pytest.raises(ConfigError, match=r"^Global.image_shape must be a list of 3 integers >= 1, got "):
            int_list(3)(value, "Global.image_shape")


def test_sections_misspelt_are_errors_unknown_ones_warned(engine_log):
    used, ignored = ("Global", "Optimizer", "DataLoader", "Metric"), {"Slim": "quantization is not supported"}
    for name, near in (("Optimiser", "Optimizer"), ("dataloader", "DataLoader"), ("Metrics", "Metric"), ("SLIM", "Slim")):
        with pytest.raises(ConfigError, match=rf"^unknown section '{name}' in the config: did you mean {near}\? "
                                              r"\(as it is, its settings would not be applied\)$"):
            check_sections({"Global": {}, name: {}}, used, ignored)
    check_sections({"Global": {}, "Slim": {}, "Teacher": {}}, used, ignored)
    assert "section Slim is ignored: quantization is not supported" in engine_log.text
    assert "unknown section Teacher in the config is ignored (the sections used: Global, Optimizer" in engine_log.text
    assert closest("optimiser", ["Optimizer", "Loss"]) == "Optimizer" and closest("zzz", ["Loss"]) is None


@pytest.fixture
def train_tool(digits, tmp_path, capsys):
    """Runs tools/train.py in process on the quick-start config: (exit status, stdout, stderr)."""
    def run(*overrides, mode="train"):
        return run_main(lambda argv: cli.main(mode, argv), quick_argv(digits, tmp_path, *overrides), capsys)

    return run


@pytest.mark.parametrize("option,message", [
    ("Global.epochs=abc", "Global.epochs must be an integer >= 1, got 'abc'"),
    ("Global.epochs=0", "Global.epochs must be an integer >= 1, got 0"),
    ("Global.epochs=-1", "Global.epochs must be an integer >= 1, got -1"),
    ("Global.epochs=1.5", "Global.epochs must be an integer >= 1, got 1.5"),
    ("Global.epochs=True", "Global.epochs must be an integer >= 1, got True"),
    ("Global.epochs=null", "Global.epochs must be an integer >= 1, got None"),
    ("Global.save_interval=abc", "Global.save_interval must be an integer, got 'abc'"),
    ("Global.eval_interval=0", "Global.eval_interval must be an integer >= 1, got 0"),
    ("Global.print_batch_step=0", "Global.print_batch_step must be an integer >= 1, got 0"),
    ("Global.update_freq=0", "Global.update_freq must be an integer >= 1, got 0"),
    ("Global.seed=-1", "Global.seed must be an integer >= 0 and <= 2147483647 or null, got -1"),
    ("Global.seed=abc", "Global.seed must be an integer >= 0 and <= 2147483647 or null, got 'abc'"),
    ("Global.eval_during_train=flase", "Global.eval_during_train must be True or False, got 'flase'"),
    ("Global.image_shape=[3, 32]", "Global.image_shape must be a list of 3 integers >= 1, got [3, 32]"),
    ("Arch.class_num=0", "Arch.class_num must be an integer >= 1, got 0"),
    ("Optimizer.lr.learning_rate=abc", "Optimizer.lr.learning_rate must be a number >= 0, got 'abc'"),
    ("Optimizer.momentum=abc", "Optimizer.momentum must be a number >= 0, got 'abc'"),
    ("EMA.decay=1.5", "EMA.decay must be a number >= 0 and <= 1, got 1.5"),
    ("Infer.batch_size=abc", "Infer.batch_size must be an integer >= 1, got 'abc'"),
    ("DataLoader.Train.loader.num_workers=-1", "DataLoader.Train.loader.num_workers must be an integer >= 0, got -1"),
    ("Optimiser.name=AdamW", "unknown section 'Optimiser' in the config: did you mean Optimizer? "
                             "(as it is, its settings would not be applied)"),
    ("Global.output_dir=/dev/null/output", "Global.output_dir: cannot create directory /dev/null/output/MicroNet_M0 "
                                           "(Not a directory)"),
])
def test_bad_values_stop_the_tools_in_one_line(train_tool, option, message):
    status, _, err = train_tool(option)
    assert status == 2 and err == f"error: {message}\n"


def test_unwritable_export_folder_fails_before_exporting(train_tool):
    status, out, err = train_tool("Global.save_inference_dir=/dev/null/inference", mode="export")
    assert status == 2 and err == "error: Global.save_inference_dir: cannot create directory /dev/null (File exists)\n"
    assert "exported" not in out


def test_save_interval_zero_or_less_saves_no_epoch_checkpoints_as_in_paddleclas(train_tool, tmp_path):
    status, _, _ = train_tool("Global.save_interval=-1", "Global.epochs=1", "Global.eval_during_train=False",
                              "DataLoader.Train.sampler.batch_size=128")
    files = os.listdir(tmp_path / "output" / "MicroNet_M0")
    assert status == 0 and "latest.pdparams" in files and not any(name.startswith("epoch_") for name in files)


def test_deploy_config_sections_keys_and_values(engine_log):
    from ppcls_ext.cli.predict_cls import check_deploy_config

    base = {"Global": {"infer_imgs": "a.jpg", "inference_model_dir": "m", "batch_size": 4}, "PreProcess": {}, "PostProcess": {}}
    assert check_deploy_config(base)["batch_size"] == 4
    with pytest.raises(ConfigError, match=r"^unknown section 'PostProces' in the deploy config: did you mean PostProcess\?"):
        check_deploy_config({**base, "PostProces": {}})
    for key, value, message in (("batch_size", "abc", "an integer >= 1"), ("cpu_num_threads", 0, "an integer >= 1 or null"),
                                ("use_gpu", "yes please", "True or False")):
        with pytest.raises(ConfigError, match=rf"^Global.{key} must be {message}, got {re.escape(repr(value))}$"):
            check_deploy_config({**base, "Global": {**base["Global"], key: value}})
    check_deploy_config({**base, "Global": {**base["Global"], "use_gpuu": True}})
    assert "Global.use_gpuu is not a known key (did you mean use_gpu?); it has no effect" in engine_log.text
