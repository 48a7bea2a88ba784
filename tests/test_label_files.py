"""Label files (`path label` lists) and class-id maps (`id name`): every bad line is one error naming the
file and line, through the tools with exit status 2 and no traceback; what editors commonly write (a
byte-order mark, CRLF, tabs, extra spaces) is read correctly."""
import pytest

from conftest import quick_argv, run_main
from ppcls_ext import cli
from ppcls_ext.config import ConfigError
from ppcls_ext.data.dataset import read_label_file
from ppcls_ext.serving.postprocess import read_label_names


@pytest.fixture
def good_lines(digits):
    return (digits / "val_small.txt").read_text().splitlines()[:3]


def write(path, lines=None, raw=None):
    path.write_bytes(raw if raw is not None else ("\n".join(lines) + "\n").encode("utf-8"))
    return path


@pytest.mark.parametrize("label,hint", [
    ("²", " (only the ASCII digits 0-9 are read)"),   # str.isdigit() is true, int() raises
    ("３", " (only the ASCII digits 0-9 are read)"),  # int() reads it as 3
    ("٣", " (only the ASCII digits 0-9 are read)"),   # Arabic-Indic three: int() reads it as 3
    ("-1", ""), ("3.0", ""), ("+3", ""), ("seven", ""),
])
def test_labels_other_than_ascii_digits_name_the_line(digits, tmp_path, good_lines, label, hint):
    path = write(tmp_path / "labels.txt", good_lines + [f"{good_lines[0].split()[0]} {label}"])
    with pytest.raises(ConfigError) as error:
        read_label_file(str(path), str(digits))
    assert str(error.value) == f"{path}, line 4: label must be a non-negative integer, got {label!r}{hint}"


def test_a_line_that_is_not_utf8_is_named(digits, tmp_path, good_lines):
    path = write(tmp_path / "labels.txt", raw=("\n".join(good_lines) + "\n").encode() + "images/caf\xe9.png 3\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"labels\.txt, line 4: not UTF-8 text \(byte 0xe9 at column 11\); save the file as UTF-8"):
        read_label_file(str(path), str(digits))


@pytest.mark.parametrize("name,raw", [
    ("bom", lambda lines: b"\xef\xbb\xbf" + "\n".join(lines).encode()),   # Windows Notepad's UTF-8
    ("crlf", lambda lines: "\r\n".join(lines).encode() + b"\r\n"),
    ("tabs", lambda lines: "\n".join(line.replace(" ", "\t") for line in lines).encode()),
    ("spaces", lambda lines: "\n".join(f"  {line.replace(' ', '   ')}  " for line in lines).encode()),
    ("blank lines", lambda lines: ("\n\n".join(lines) + "\n\n").encode()),
], ids=lambda value: value if isinstance(value, str) else "")
def test_common_editor_variants_read_the_same(digits, tmp_path, good_lines, name, raw):
    expected = read_label_file(str(write(tmp_path / "plain.txt", good_lines)), str(digits))
    paths, labels, _ = read_label_file(str(write(tmp_path / "variant.txt", raw=raw(good_lines))), str(digits))
    assert (paths, labels) == expected[:2]


def test_bad_label_through_eval_tool_is_one_line(digits, tmp_path, good_lines, digits_weights, capsys):
    path = write(tmp_path / "labels.txt", good_lines + [f"{good_lines[0].split()[0]} ²"])
    argv = quick_argv(digits, tmp_path, f"Global.pretrained_model={digits_weights}", f"DataLoader.Eval.dataset.cls_label_path={path}")
    status, _, err = run_main(lambda a: cli.main("eval", a), argv, capsys)
    assert status == 2 and err == (f"error: {path}, line 4: label must be a non-negative integer, got '²' "
                                   "(only the ASCII digits 0-9 are read)\n")


def test_training_list_is_checked_the_same(digits, tmp_path, good_lines, capsys):
    path = write(tmp_path / "train.txt", good_lines + [f"{good_lines[0].split()[0]} ３"])
    argv = quick_argv(digits, tmp_path, f"DataLoader.Train.dataset.cls_label_path={path}")
    status, _, err = run_main(lambda a: cli.main("train", a), argv, capsys)
    assert status == 2 and err.startswith(f"error: {path}, line 4: label must be a non-negative integer, got '３'")


@pytest.mark.parametrize("lines,raw,message", [
    (["0 zero", "⁹ nine"], None, r"line 2: expected '<class id> <name>' with the id in ASCII digits, got '⁹ nine'"),
    (["0 zero", "1 one", "1 eins"], None, r"line 3: class id 1 is named twice \('one', 'eins'\)"),
    (None, "0 zero\n1 n\xe9uf\n".encode("latin-1"), r"line 2: not UTF-8 text \(byte 0xe9"),
])
def test_class_id_map_problems_name_the_line(tmp_path, lines, raw, message):
    path = write(tmp_path / "names.txt", lines, raw)
    with pytest.raises(ConfigError, match=r"names\.txt, " + message):
        read_label_names(str(path))


def test_class_id_map_through_infer_tool(digits, tmp_path, digits_weights, capsys):
    names = write(tmp_path / "names.txt", ["0 zero", "1 one", "1 eins"])
    argv = quick_argv(digits, tmp_path, f"Global.pretrained_model={digits_weights}",
                      f"Infer.PostProcess.class_id_map_file={names}", f"Infer.infer_imgs={digits}/demo/one.png")
    status, out, err = run_main(lambda a: cli.main("infer", a), argv, capsys)
    assert status == 2 and err == f"error: {names}, line 3: class id 1 is named twice ('one', 'eins')\n"


@pytest.mark.parametrize("names,found", [
    ([f"{i} c{i}" for i in range(5)], "names 5 classes (ids 0-4), the model has 10"),
    (None, "names 1000 classes (ids 0-999), the model has 10"),  # ImageNet's names, the default, on a 10-class model
])
def test_class_id_map_for_another_class_count_is_flagged(digits, tmp_path, digits_weights, capsys, names, found):
    option = f"Infer.PostProcess.class_id_map_file={write(tmp_path / 'names.txt', names)}" if names else \
        "Infer.PostProcess.class_id_map_file=ppcls/utils/imagenet1k_label_list.txt"
    argv = quick_argv(digits, tmp_path, f"Global.pretrained_model={digits_weights}", option,
                      f"Infer.infer_imgs={digits}/demo/one.png")
    status, out, _ = run_main(lambda a: cli.main("infer", a), argv, capsys)
    assert status == 0 and f"WARNING: Infer.PostProcess.class_id_map_file {found} (Arch.class_num)" in out
