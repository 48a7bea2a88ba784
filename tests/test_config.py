"""PaddleClas-format configs: YAML loading, `-o` overrides, and errors that name the key."""
import pytest

from ppcls_ext.config import ConfigError, apply_override, load_config, parse_value, section

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
