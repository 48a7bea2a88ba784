"""ImageFolderDataset and the folder scan behind it: class ids are the class folders in sorted order; hidden
entries and Windows clutter are skipped; nested folders and symbolic links are followed; empty classes,
unreadable or non-image files, link loops and a class count other than Arch.class_num are one error naming
the file or folder; through the tools, one line and exit status 2."""
import errno
import os

import cv2
import numpy as np
import pytest

from conftest import QUICK_START, run_main
from ppcls_ext import cli
from ppcls_ext.config import ConfigError
from ppcls_ext.data import image_folder
from ppcls_ext.data.image_folder import ImageFolderDataset, check_image_file, folder_classes, scan_image_folder
from ppcls_ext.data.image_io import image_format
from ppcls_ext.data.transforms import build_transforms


def write_png(path, value, size=8):
    """A `size` x `size` PNG filled with one BGR colour, its folders created."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), np.full((size, size, 3), value, np.uint8))


def make_tree(root, counts, size=8):
    """One folder per class name with `counts[name]` PNGs, each class a different colour."""
    for index, (name, count) in enumerate(counts.items()):
        for i in range(count):
            write_png(root / name / f"{i:02d}.png", (40 * index, 255 - 40 * index, 128), size)
    return root


def test_class_ids_are_the_sorted_folder_names_and_samples_carry_them(tmp_path):
    names = ["zebra", "Ant", "bee 2", "été", "10", "9"]
    root = make_tree(tmp_path / "data", {name: 2 for name in names})
    classes, images = scan_image_folder(str(root))
    assert classes == sorted(names) == ["10", "9", "Ant", "bee 2", "zebra", "été"]  # code-point order, as sorted()
    assert [(image.path, image.label) for image in images] == [
        (f"{name}/{i:02d}.png", label) for label, name in enumerate(sorted(names)) for i in range(2)]
    decode = build_transforms([{"DecodeImage": {"to_rgb": True, "channel_first": False}}], "test")
    dataset = ImageFolderDataset(str(root), transform_ops=decode)
    for index in range(len(dataset)):
        image, label = dataset[index]
        written = names.index(classes[int(label)])  # make_tree colours class k (in `names` order) alike
        np.testing.assert_array_equal(image[:, 0, 0], [128, 255 - 40 * written, 40 * written])


def test_hidden_entries_and_windows_clutter_are_skipped_nested_folders_are_read(tmp_path):
    root = make_tree(tmp_path / "data", {"cat": 1, "dog": 1})
    write_png(root / ".ipynb_checkpoints" / "x.png", 0)          # torchvision would make this a class
    write_png(root / "cat" / ".hidden" / "x.png", 0)
    (root / "cat" / "._00.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    (root / "cat" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "dog" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / "dog" / "desktop.ini").write_text("[.ShellClassInfo]\n")
    (root / "train_list.txt").write_text("labels live beside the classes\n")  # not in a class: left alone
    write_png(root / "dog" / "puppies" / "deep" / "a.png", 9)
    classes, images = scan_image_folder(str(root))
    assert classes == ["cat", "dog"]
    assert [image.path for image in images] == ["cat/00.png", "dog/00.png", "dog/puppies/deep/a.png"]


def test_symbolic_links_are_followed_and_a_loop_is_refused(tmp_path):
    outside = make_tree(tmp_path / "elsewhere", {"birds": 2})
    root = make_tree(tmp_path / "data", {"cat": 1})
    os.symlink(outside / "birds", root / "bird")                    # a class folder that is a link
    os.symlink(outside / "birds" / "00.png", root / "cat" / "linked.png")
    classes, images = scan_image_folder(str(root))
    assert classes == ["bird", "cat"]
    assert [image.path for image in images] == ["bird/00.png", "bird/01.png", "cat/00.png", "cat/linked.png"]

    os.symlink(root / "cat", root / "cat" / "again")
    with pytest.raises(ConfigError, match=r"cat/again: a symbolic link back to .*/cat, a folder it is inside of"):
        scan_image_folder(str(root))


@pytest.mark.parametrize("name,content,message", [
    ("notes.txt", b"hello", r"cat/notes\.txt: not an image file \(images end in \.jpg .* any case\)"),
    ("empty.jpg", b"", r"cat/empty\.jpg: the file is empty"),
    ("page.JPG", b"<html>not a photo</html>", r"cat/page\.JPG: not an image: it does not start like a JPEG, PNG"),
])
def test_files_that_are_not_readable_images_are_named(tmp_path, name, content, message):
    root = make_tree(tmp_path / "data", {"cat": 1, "dog": 1})
    (root / "cat" / name).write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        scan_image_folder(str(root))


def test_broken_links_and_empty_classes_are_named(tmp_path):
    root = make_tree(tmp_path / "data", {"cat": 1, "dog": 1})
    os.symlink(tmp_path / "gone.png", root / "cat" / "gone.png")
    with pytest.raises(ConfigError, match=r"cat/gone\.png: a broken symbolic link \(its target .*gone\.png does not exist\)"):
        scan_image_folder(str(root))
    os.remove(root / "cat" / "gone.png")
    (root / "empty").mkdir()
    (root / "empty" / ".keep").write_text("")
    with pytest.raises(ConfigError, match=r"class folder .*/empty holds no images \(files starting with '\.' are ignored\)"):
        scan_image_folder(str(root))


def test_a_file_without_read_permission_is_named(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "data", {"cat": 1, "dog": 1})
    locked = root / "cat" / "locked.png"
    write_png(locked, 1)
    os.chmod(locked, 0)
    if os.access(locked, os.R_OK):  # root reads it anyway: open() fails for it as it does for other users
        def refusing_open(path, *args, **kwargs):
            if os.fspath(path) == str(locked):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return open(path, *args, **kwargs)

        monkeypatch.setattr(image_folder, "open", refusing_open, raising=False)
    with pytest.raises(ConfigError, match=r"cat/locked\.png: cannot read the file \(Permission denied\)"):
        scan_image_folder(str(root))


def test_a_root_without_class_folders_says_how_to_lay_it_out(tmp_path):
    write_png(tmp_path / "flat" / "a.png", 0)
    with pytest.raises(ConfigError, match=r"has no class folders .*it holds images directly \(a\.png, \.\.\.\): put each "
                                          r"class's images in a sub-folder"):
        folder_classes(str(tmp_path / "flat"))
    with pytest.raises(ConfigError, match="folder not found"):
        folder_classes(str(tmp_path / "missing"))


def test_signatures_of_every_format_the_decoder_reads(tmp_path):
    image = np.zeros((4, 4, 3), np.uint8)
    for extension, name in ((".jpg", "JPEG"), (".png", "PNG"), (".bmp", "BMP"), (".tif", "TIFF"), (".webp", "WebP"),
                            (".ppm", "PNM")):
        ok, data = cv2.imencode(extension, image)
        assert ok and image_format(bytes(data[:12])) == name, extension
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "x.gif")
    assert image_format((tmp_path / "x.gif").read_bytes()[:12]) == "GIF"
    assert image_format(b"RIFF\x00\x00\x00\x00WAVE") is None and image_format(b"P7 332\n") is None
    check_image_file(str(tmp_path / "x.gif"))


def test_a_label_list_selects_images_and_must_agree_with_the_folders(tmp_path):
    root = make_tree(tmp_path / "data", {"cat": 3, "dog": 3})
    lines = tmp_path / "val.txt"
    lines.write_text("dog/01.png 1\ncat/02.png 0\n")
    dataset = ImageFolderDataset(str(root), cls_label_path=str(lines))
    assert [os.path.relpath(p, root) for p in dataset.images] == ["dog/01.png", "cat/02.png"] and dataset.labels == [1, 0]
    assert dataset.classes == ["cat", "dog"]

    lines.write_text("dog/01.png 1\ncat/02.png 1\n")
    with pytest.raises(ConfigError, match=r"val\.txt, line 2: cat/02\.png is labelled 1, but its class folder 'cat' has id 0"):
        ImageFolderDataset(str(root), cls_label_path=str(lines))
    (root / "loose.png").write_bytes((root / "cat" / "00.png").read_bytes())
    lines.write_text("loose.png 0\n")
    with pytest.raises(ConfigError, match=r"val\.txt, line 1: loose\.png is not in a class folder of .* \(classes: cat, dog\)"):
        ImageFolderDataset(str(root), cls_label_path=str(lines))
    (root / "cat" / "fake.png").write_text("not a png")
    lines.write_text("cat/fake.png 0\n")
    with pytest.raises(ConfigError, match=r"val\.txt, line 1: .*cat/fake\.png: not an image"):
        ImageFolderDataset(str(root), cls_label_path=str(lines))


def test_class_num_must_match_the_class_folders_through_the_tool(tmp_path, capsys):
    root = make_tree(tmp_path / "data", {"cat": 2, "dog": 2, "emu": 2})
    argv = ["-c", QUICK_START, "-o", f"Global.output_dir={tmp_path}/out", "-o", "DataLoader.Train.dataset.name=ImageFolderDataset",
            "-o", f"DataLoader.Train.dataset.image_root={root}", "-o", "DataLoader.Train.dataset.cls_label_path=null",
            "-o", "Global.eval_during_train=False"]
    status, _, err = run_main(lambda a: cli.main("train", a), argv, capsys)
    assert status == 2 and err == (f"error: Arch.class_num is 10, but image_root {root} has 3 class folders (cat, dog, emu): "
                                   "set Arch.class_num: 3\n")
    (root / "dog" / "01.png").write_bytes(b"")
    status, _, err = run_main(lambda a: cli.main("train", a + ["-o", "Arch.class_num=3"]), argv, capsys)
    assert status == 2 and err == f"error: {root}/dog/01.png: the file is empty\n"
