"""YAML that would expand or nest without bound (configs, `-o` values, an export's inference.yml) is refused
in one line before anything is built; configs that use anchors, aliases and merge keys within bounds load
as PyYAML's safe loader loads them."""
import os
import resource
import subprocess
import sys
import time

import pytest
import yaml

from conftest import QUICK_START, REPO, run_main
from ppcls_ext import cli
from ppcls_ext.config import ConfigError, load_config, load_yaml
from ppcls_ext.inference import read_description
from ppcls_ext.inference.paddle_backend import computes_channels_last


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """Nested aliases: `width ** levels` strings from a few kB."""
    lines = ["Global:", "  epochs: 1", f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    for level in range(1, levels + 1):
        lines.append(f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def infer(argv, capsys):
    return run_main(lambda args: cli.main("infer", args), argv, capsys)


@pytest.mark.parametrize("name,text,words", [
    ("laughs.yaml", billion_laughs(), "its aliases expand to more than"),
    ("deep_flow.yaml", "Global: " + "[" * 50_000 + "]" * 50_000 + "\n", "nest"),
    ("deep_block.yaml", "Global:\n" + "".join(" " * i + "k:\n" for i in range(1, 3000)), "nested deeper than 100 levels"),
    ("cycle.yaml", "Global: &g {epochs: 1, again: *g}\n", "refers to a node that contains it"),
    ("long_number.yaml", "Global:\n  epochs: " + "9" * 100_000 + "\n", "a number of 100000 characters"),
    ("sexagesimal.yaml", "Global:\n  epochs: " + "1:" * 50_000 + "1\n", "a number of 100001 characters"),
    ("month13.yaml", "Global:\n  date: 2001-13-45\n", "a value cannot be read (ValueError: month must be in 1..12)"),
    ("bad_timestamp.yaml", "Global:\n  date: !!timestamp soon\n", "a value cannot be read (AttributeError")])
def test_unbounded_configs_are_one_line(tmp_path, capsys, name, text, words):
    path = tmp_path / name
    path.write_text(text)
    start = time.perf_counter()
    status, _, err = infer(["-c", str(path)], capsys)
    assert status == 2 and err.startswith(f"error: {path}") and err.count("\n") == 1, err
    assert words in err and time.perf_counter() - start < 10


def test_a_billion_laughs_is_refused_fast_by_the_command_line_under_a_memory_limit(tmp_path):
    path = tmp_path / "laughs.yaml"
    text = billion_laughs(levels=9, width=9)
    path.write_text(text + "# " + "x" * (3400 - len(text) - 3) + "\n")  # the 3.4 kB: 9**9 = 387 million strings
    assert path.stat().st_size == 3400
    limit = (4 << 30, 4 << 30)
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "infer.py"), "-c", str(path)], capture_output=True,
                            text=True, timeout=120, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, limit))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {path}: its aliases expand to more than")


@pytest.mark.parametrize("value,words", [
    ("[" * 50_000 + "]" * 50_000, "-o Global.extra"),
    ("{a: &a [1, 1, 1, 1, 1, 1, 1, 1], b: &b [*a, *a, *a, *a, *a, *a, *a, *a], c: &c [*b, *b, *b, *b, *b, *b, *b, *b], "
     "d: [*c, *c, *c, *c, *c, *c, *c, *c]}", "-o Global.extra: its aliases expand")])
def test_unbounded_override_values_are_one_line(capsys, value, words):
    status, _, err = infer(["-c", QUICK_START, "-o", f"Global.extra={value}"], capsys)
    assert status == 2 and err.startswith(f"error: {words}") and err.count("\n") == 1, err


def test_an_export_description_is_bounded_too(tmp_path):
    (tmp_path / "inference.yml").write_text(billion_laughs())
    with pytest.raises(ConfigError, match=r"inference\.yml: its aliases expand to more than"):
        read_description(str(tmp_path))
    with pytest.raises(ConfigError, match=r"inference\.yml: its aliases expand to more than"):
        computes_channels_last(str(tmp_path))


def test_anchors_aliases_and_merge_keys_within_bounds_load_as_pyyaml_loads_them(tmp_path):
    text = ("base: &base {name: MicroNet_M0, class_num: 10}\n"
            "ops: &ops [{DecodeImage: {to_rgb: true}}, {ResizeImage: {resize_short: 36}}]\n"
            "Arch: {<<: *base, dropout: 0.1}\n"
            "DataLoader: {Train: {transforms: *ops}, Eval: {transforms: *ops}}\n")
    assert load_yaml(text, "t") == yaml.safe_load(text)
    path = tmp_path / "anchors.yaml"
    path.write_text(text)
    config = load_config(str(path))
    assert config["Arch"] == {"name": "MicroNet_M0", "class_num": 10, "dropout": 0.1}
    assert config["DataLoader"]["Eval"]["transforms"] == config["DataLoader"]["Train"]["transforms"]
