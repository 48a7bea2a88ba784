"""ConfigRegistry, the one registry of config-named parts, and the config validators the parts check their
values with."""
from __future__ import annotations

import numpy as np
import pytest

from ppcls_ext.config import ConfigError, int_list, integer, number, number_list, one_of, string
from ppcls_ext.config_registry import ConfigRegistry


def fresh_registry(**options) -> ConfigRegistry:
    """A registry of two made-up parts: Blur(radius) checks its value itself, Shift is a function."""
    parts = ConfigRegistry("widget", **options)

    @parts.register
    class Blur:
        def __init__(self, radius: int, mode: str = "box", class_num: int = 0):
            if radius < 0:
                raise ValueError(f"Blur: radius must be >= 0, got {radius}")
            self.radius, self.mode, self.class_num = radius, mode, class_num

    @parts.register(name="Shift", arguments={"pixels": integer(0)})
    def shift(pixels: int = 1, hidden: str = "not a config key"):
        return ("shift", pixels, hidden)

    return parts


def test_register_names_and_mapping():
    parts = fresh_registry()
    assert parts.names() == ["Blur", "Shift"] and list(parts) == ["Blur", "Shift"] and len(parts) == 2
    assert parts["Shift"].__name__ == "shift" and "Blur" in parts
    parts.register(parts["Blur"])  # the same part again: nothing changes
    with pytest.raises(ValueError, match="widget 'Blur' is registered twice"):
        parts.register(lambda: None, name="Blur")


def test_build_the_entry_forms():
    parts = fresh_registry()
    blur = parts.build({"Blur": {"radius": 2}}, "W[0]", class_num=10)
    assert (blur.radius, blur.mode, blur.class_num) == (2, "box", 10)
    assert parts.build("Shift", "W[1]") == ("shift", 1, "not a config key")
    named = fresh_registry(name_key="name", shared={"weight": number(0)})
    assert named.build({"name": "Shift", "pixels": 3, "weight": 0.5}, "Section") == ("shift", 3, "not a config key")


@pytest.mark.parametrize("spec, message", [
    ({"Blurr": {"radius": 1}}, "W[0]: unknown widget 'Blurr'; valid: Blur, Shift; did you mean Blur?"),
    ({"Sharpen": None}, "W[0]: unknown widget 'Sharpen'; valid: Blur, Shift"),
    ({"Blur": {"radius": 1, "mdoe": "box"}}, "W[0]: Blur has no argument 'mdoe'; valid: radius, mode; did you mean mode?"),
    ({"Blur": {"mode": "box"}}, "W[0]: Blur needs argument 'radius'"),
    ({"Blur": {"radius": -1}}, "W[0]: Blur: radius must be >= 0, got -1"),
    ({"Shift": {"hidden": "x"}}, "W[0]: Shift has no argument 'hidden'; valid: pixels"),
    ({"Shift": {"pixels": 1.5}}, "W[0].Shift.pixels must be an integer >= 0, got 1.5"),
    ({"Blur": 3}, "W[0]: arguments of Blur must be a mapping, got 3"),
])
def test_build_errors_name_the_path(spec, message):
    with pytest.raises(ConfigError) as error:
        fresh_registry().build(spec, "W[0]", class_num=1)
    assert str(error.value) == message


@pytest.mark.parametrize("spec, message", [
    ({"pixels": 1}, "Section.name is missing (the widget: Blur, Shift)"),
    ({"name": ["Blur"]}, "Section.name: unknown widget ['Blur']; valid: Blur, Shift"),
    ({"name": "Shift", "weight": -1}, "Section.weight must be a number >= 0, got -1"),
    ({"name": "Shift", "wieght": 1}, "Section: Shift has no argument 'wieght'; valid: pixels, weight; did you mean weight?"),
    ("Shift", "Section: expected a mapping with name: <widget> and its settings, got 'Shift'"),
])
def test_the_name_key_form_and_its_shared_keys(spec, message):
    with pytest.raises(ConfigError) as error:
        fresh_registry(name_key="name", shared={"weight": number(0)}, sort_names=False).build(spec, "Section")
    assert str(error.value) == message


def test_constructor_errors_a_part_words_itself_pass_on_as_they_are():
    """A dataset names the file at fault; the config path would point away from it."""
    parts = ConfigRegistry("dataset", name_key="name", errors_name_their_source=True)

    @parts.register
    def Folder(image_root: str):  # noqa: N802 - named as a config names it
        raise ConfigError(f"{image_root}/cat/1.png: the file is empty")

    with pytest.raises(ConfigError) as error:
        parts.build({"name": "Folder", "image_root": "/data"}, "DataLoader.Train.dataset")
    assert str(error.value) == "/data/cat/1.png: the file is empty"


def test_a_type_error_inside_a_part_passes_on_unchanged():
    parts = ConfigRegistry("widget")

    @parts.register
    def Broken(size: int = 1):  # noqa: N802
        return size + None

    with pytest.raises(TypeError, match="unsupported operand"):
        parts.build({"Broken": {"size": 2}}, "W[0]")


def test_wrap_builds_through_a_subclass():
    parts = fresh_registry()
    blur = parts.build({"Blur": {"radius": 1}}, "W[0]", wrap=lambda cls: type("Tagged", (cls,), {"tag": True}))
    assert blur.tag and blur.radius == 1


def test_validators():
    assert integer(1)(np.int64(3), "k") == 3
    assert number(0, 1)(np.float32(0.5), "k") == 0.5
    for check, value, message in (
            (number(0), float("nan"), "k must be a number >= 0, got nan"),
            (integer(1, expected="a positive int (set Arch.class_num)"), None,
             "k must be a positive int (set Arch.class_num), got None"),
            (one_of((1, 0, -1)), True, "k must be one of 1, 0, -1, got True"),
            (one_of(("chw", "hwc"), expected="'chw' or 'hwc'"), "CHW", "k must be 'chw' or 'hwc', got 'CHW'"),
            (string(), 5, "k must be a string, got 5"),
            (int_list(None, 1, optional=False), [], "k must be a list of one or more integers >= 1, got []"),
            (int_list(3, 0, 255), [1, 2, 256], "k must be a list of 3 integers >= 0 and <= 255, got [1, 2, 256]"),
            (number_list(0), [0.1, "x"], "k must be a list of numbers >= 0, got [0.1, 'x']")):
        with pytest.raises(ConfigError) as error:
            check(value, "k")
        assert str(error.value) == message
    assert one_of((None, "softmax"))(None, "k") is None and string(optional=True)(None, "k") is None
    assert int_list(3)(None, "k") is None and number_list(optional=True)(None, "k") is None
