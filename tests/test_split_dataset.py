"""tools/split_dataset.py and the split behind it: per-class (stratified) counts by the documented rule,
disjoint parts that cover every image, the same split for the same seed (and for the other classes when a
class changes), files that our label-file readers and PaddleClas's class-map reader parse back, and bad
folders or values refused in one line with exit status 2, writing nothing."""
import os
import subprocess
import sys

import pytest

from conftest import REPO, run_main
from ppcls_ext.data.dataset import read_label_file
from ppcls_ext.data.split import held_out_counts, split_image_folder
from ppcls_ext.cli.split_dataset import main
from ppcls_ext.serving.postprocess import read_label_names
from test_image_folder import make_tree, write_png

COUNTS = {"cat": 10, "dog": 7, "emu": 3, "yak": 1}


def read_split(folder):
    """{part: [(relative path, label)]} from the written label files."""
    parts = {}
    for part in ("train", "val", "test"):
        path = folder / f"{part}_list.txt"
        if path.exists():
            paths, labels, _ = read_label_file(str(path), str(folder))
            parts[part] = [(os.path.relpath(p, folder), label) for p, label in zip(paths, labels)]
    return parts


@pytest.mark.parametrize("n,val,test,expected", [
    (10, 0.2, 0.0, (2, 0)), (10, 0.25, 0.1, (3, 1)), (7, 0.2, 0.0, (1, 0)), (3, 0.2, 0.0, (1, 0)),
    (3, 0.2, 0.2, (1, 1)), (2, 0.2, 0.2, (1, 0)), (1, 0.5, 0.0, (0, 0)), (100, 0.0, 0.15, (0, 15)), (4, 0.5, 0.0, (2, 0)),
])
def test_held_out_counts_follow_the_rule(n, val, test, expected):
    """round(n * fraction) (halves up), at least one when asked for, always one left for training."""
    assert held_out_counts(n, val, test) == expected


def test_split_is_stratified_disjoint_complete_and_parses_back(tmp_path, capsys):
    root = make_tree(tmp_path / "data", COUNTS)
    status, out, err = run_main(main, ["--dataset_dir", str(root), "--val_value", "0.2", "--test_value", "0.1"], capsys)
    assert status == 0
    assert "4 classes, 21 images: train 14, val 4, test 3 (seed 0)" in out
    assert err == "warning: class 'yak' has too few images to hold one out for val_list.txt\n" \
                  "warning: class 'yak' has too few images to hold one out for test_list.txt\n"
    parts = read_split(root)
    everything = sorted(item for items in parts.values() for item in items)
    assert everything == sorted((f"{name}/{i:02d}.png", label) for label, name in enumerate(sorted(COUNTS))
                                for i in range(COUNTS[name]))
    for label, name in enumerate(sorted(COUNTS)):
        val, test = held_out_counts(COUNTS[name], 0.2, 0.1)
        assert [sum(lab == label for _, lab in parts[part]) for part in ("train", "val", "test")] == [
            COUNTS[name] - val - test, val, test]
    assert read_label_names(str(root / "label_list.txt")) == dict(enumerate(sorted(COUNTS)))


def test_same_seed_same_split_other_seed_another_and_other_classes_keep_theirs(tmp_path):
    root = make_tree(tmp_path / "data", {"cat": 20, "dog": 20})
    first = split_image_folder(str(root), 0.3, seed=7)
    assert split_image_folder(str(root), 0.3, seed=7).parts == first.parts
    assert split_image_folder(str(root), 0.3, seed=8).parts["val"] != first.parts["val"]
    make_tree(tmp_path / "data", {"ant": 5})  # a new class (id 0) shifts the ids, not the other classes' choice
    grown = split_image_folder(str(root), 0.3, seed=7)
    assert [image.path for image in grown.parts["val"] if not image.path.startswith("ant/")] == \
           [image.path for image in first.parts["val"]]


@pytest.mark.parametrize("setup,args,message", [
    (lambda root: (root / "dog" / "00.png").unlink() or (root / "dog" / "01.png").unlink(), [],
     "error: dataset folder: class folder {root}/dog holds no images (files starting with '.' are ignored); add images or "
     "remove the folder\n"),
    (lambda root: (root / "dog" / "00.png").write_bytes(b"GIFnot really"), [],
     "error: {root}/dog/00.png: not an image: it does not start like a JPEG, PNG, BMP, GIF, TIFF, WebP or PNM file "
     "(first bytes b'GIFnot r')\n"),
    (lambda root: None, ["--val_value", "0.7", "--test_value", "0.3"],
     "error: val_value + test_value must be below 1 (the rest is the training set), got 0.7 + 0.3\n"),
    (lambda root: None, ["--val_value", "1.5"], "error: val_value must be a fraction in [0, 1), got 1.5\n"),
])
def test_bad_folders_and_values_are_one_line_and_write_nothing(tmp_path, capsys, setup, args, message):
    root = make_tree(tmp_path / "data", {"cat": 2, "dog": 2})
    setup(root)
    status, out, err = run_main(main, ["--dataset_dir", str(root)] + args, capsys)
    assert status == 2 and out == "" and err == message.format(root=root)
    assert sorted(os.listdir(root)) == ["cat", "dog"]


def test_the_tool_runs_as_a_script_and_writes_where_asked(tmp_path):
    root = make_tree(tmp_path / "data", {"a b": 3, "c": 3})
    write_png(root / "c" / "nested" / "x.png", 3)
    done = subprocess.run([sys.executable, os.path.join(REPO, "tools", "split_dataset.py"), "--dataset_dir", str(root),
                           "--save_dir", str(tmp_path / "lists"), "--seed", "3"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "listed paths hold spaces (e.g. 'a b/" in done.stderr
    assert sorted(os.listdir(tmp_path / "lists")) == ["label_list.txt", "train_list.txt", "val_list.txt"]
    paths, labels, _ = read_label_file(str(tmp_path / "lists" / "train_list.txt"), str(root))
    assert len(paths) == 5 and set(labels) == {0, 1}
    assert (tmp_path / "lists" / "label_list.txt").read_text() == "0 a b\n1 c\n"
