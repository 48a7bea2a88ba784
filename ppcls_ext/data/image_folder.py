"""Datasets kept as one folder per class (torchvision's ImageFolder layout, PaddleX's ImageNet format):
`image_root/<class name>/**/<image>`. Class ids are the class folders' names in sorted order.

What is read, and what is refused (one ConfigError naming the file or folder, before any training):

- Classes are the sub-folders of `image_root` (symbolic links to folders count); files directly in
  `image_root` are not in a class and are left alone (label lists and class maps live there).
- Hidden entries, whose names start with '.', are skipped everywhere: `.ipynb_checkpoints` (which
  torchvision would take as a class), `.DS_Store`, macOS's `._photo.jpg` resource forks. So are
  Windows Explorer's `Thumbs.db` and `desktop.ini`.
- Inside a class folder, nested folders are walked (their images belong to the class) and symbolic
  links are followed, as torchvision does; a link that leads back into a folder being walked is refused.
- A file counts as an image by its extension (any case, `IMAGE_EXTENSIONS`: those tools/infer.py reads);
  any other file is refused (torchvision leaves it out silently). Each image's first bytes must be a
  format the decoder reads; a file that cannot be opened, an empty file or another format is refused.
  (Pixel data is checked when the image is decoded, as for ImageNetDataset.)
- A class folder without images is refused, as is an `image_root` without class folders.
"""
from __future__ import annotations

import os
from typing import Callable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..config import ConfigError, string
from ..output_paths import replaced_atomically
from .dataset import ImageNetDataset, read_label_file
from .image_io import IMAGE_EXTENSIONS, SIGNATURE_BYTES, image_format
from .registries import DATASETS

#: files that Windows Explorer writes into image folders (lower case), skipped like hidden files
CLUTTER_FILES = frozenset({"thumbs.db", "desktop.ini"})
#: the formats `image_format` recognises, for messages
READABLE_FORMATS = "JPEG, PNG, BMP, GIF, TIFF, WebP or PNM"


class FolderImage(NamedTuple):
    """An image of a class folder: its path relative to `image_root` ('/'-separated) and class id."""

    path: str
    label: int


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _check_name(path: str) -> None:
    """Label files and class maps hold one entry per line: a name with a line break cannot be listed."""
    if "\n" in path or "\r" in path:
        raise ConfigError(f"{path!r}: the name holds a line break, which label files cannot list; rename it")


def folder_classes(image_root: str, where: str = "image_root") -> List[str]:
    """The class names of `image_root`: its visible sub-folders, sorted (their ids are their positions)."""
    if not os.path.isdir(image_root):
        raise ConfigError(f"{where}: folder not found: {image_root}")
    try:
        entries = sorted(os.scandir(image_root), key=lambda entry: entry.name)
    except OSError as error:
        raise ConfigError(f"{where}: cannot list {image_root} ({error.strerror})") from error
    classes = [entry.name for entry in entries if not _hidden(entry.name) and entry.is_dir()]
    if not classes:
        loose = [entry.name for entry in entries if entry.name.lower().endswith(IMAGE_EXTENSIONS)]
        hint = (f"; it holds images directly ({loose[0]}, ...): put each class's images in a sub-folder named after "
                "the class" if loose else "")
        raise ConfigError(f"{where}: {image_root} has no class folders (expected one sub-folder per class, holding "
                          f"that class's images){hint}")
    for name in classes:
        _check_name(os.path.join(image_root, name))
    return classes


def check_image_file(path: str) -> None:
    """`path` can be opened and starts like an image the decoder reads; else a ConfigError naming it."""
    try:
        with open(path, "rb") as f:
            header = f.read(SIGNATURE_BYTES)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the file ({error.strerror})") from error
    if not header:
        raise ConfigError(f"{path}: the file is empty")
    if image_format(header) is None:
        raise ConfigError(f"{path}: not an image: it does not start like a {READABLE_FORMATS} file (first bytes "
                          f"{header[:8]!r})")


def _walk_images(folder: str, ancestors: Tuple[str, ...]) -> Iterator[str]:
    """The image files under `folder`, sorted by path, checked as the module docstring says."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as error:
        raise ConfigError(f"{folder}: cannot list the folder ({error.strerror})") from error
    for entry in entries:
        if _hidden(entry.name):
            continue
        path = entry.path
        _check_name(path)
        if entry.is_dir():
            real = os.path.realpath(path)
            if real in ancestors:
                raise ConfigError(f"{path}: a symbolic link back to {real}, a folder it is inside of (a loop)")
            yield from _walk_images(path, ancestors + (real,))
        elif entry.name.lower() in CLUTTER_FILES:
            continue
        elif entry.is_symlink() and not os.path.exists(path):
            raise ConfigError(f"{path}: a broken symbolic link (its target {os.readlink(path)} does not exist)")
        elif not entry.is_file():
            raise ConfigError(f"{path}: not a regular file or folder")
        elif not entry.name.lower().endswith(IMAGE_EXTENSIONS):
            raise ConfigError(f"{path}: not an image file (images end in {' '.join(IMAGE_EXTENSIONS)}, any case); "
                              "move it out of the dataset folder")
        else:
            check_image_file(path)
            yield path


def scan_image_folder(image_root: str, where: str = "image_root") -> Tuple[List[str], List[FolderImage]]:
    """(class names, images of every class) of a class-per-folder tree; a class without images, or a file
    that is not a readable image, is a ConfigError naming it."""
    classes = folder_classes(image_root, where)
    images: List[FolderImage] = []
    for label, name in enumerate(classes):
        folder = os.path.join(image_root, name)
        found = [os.path.relpath(path, image_root).replace(os.sep, "/")
                 for path in _walk_images(folder, (os.path.realpath(folder),))]
        if not found:
            raise ConfigError(f"{where}: class folder {folder} holds no images (files starting with '.' are ignored); "
                              "add images or remove the folder")
        images += [FolderImage(path, label) for path in found]
    return classes, images


def class_map_text(classes: Sequence[str]) -> str:
    """PaddleClas's class-id map (`Infer.PostProcess.class_id_map_file`): `<id> <name>` per line."""
    return "".join(f"{label} {name}\n" for label, name in enumerate(classes))


def write_text_file(path: str, text: str) -> None:
    """Write `path` whole or not at all (an interrupted write leaves any earlier file in place)."""
    with replaced_atomically(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)


@DATASETS.register(arguments={"image_root": string(), "cls_label_path": string(optional=True),
                             "delimiter": string(optional=True)})
class ImageFolderDataset(ImageNetDataset):
    """A class-per-folder dataset (see the module docstring): yields (transformed image, class id), ids in
    the sorted order of the class folders. Every image of the folder, or with `cls_label_path` only those
    that label file lists (e.g. a split of tools/split_dataset.py): each listed path must lie in a class
    folder, with that folder's id as its label. Unreadable images are handled as ImageNetDataset does."""

    removal_hint = "fix the file or move it out of image_root"

    def __init__(
        self,
        image_root: str,
        cls_label_path: Optional[str] = None,
        transform_ops: Optional[Callable[[bytes], np.ndarray]] = None,
        delimiter: Optional[str] = None,
        skip_broken: bool = True,
    ):
        self.image_root = image_root
        self.transform = transform_ops
        self.skip_broken = skip_broken
        if cls_label_path is None:
            self.classes, found = scan_image_folder(image_root)
            self.label_path = image_root
            self.images = [os.path.join(image_root, image.path) for image in found]
            self.labels = [image.label for image in found]
            self.line_numbers = [0] * len(found)
        else:
            self.classes = folder_classes(image_root)
            self.label_path = cls_label_path
            self.images, self.labels, self.line_numbers = read_label_file(cls_label_path, image_root, delimiter)
            self._check_listed()

    def _check_listed(self) -> None:
        """Each listed image lies in a class folder whose id is its label, and is a readable image."""
        ids = {name: label for label, name in enumerate(self.classes)}
        for path, label, line in zip(self.images, self.labels, self.line_numbers):
            where = f"{self.label_path}, line {line}"
            relative = os.path.relpath(path, self.image_root)
            folder = relative.replace(os.sep, "/").split("/")[0]
            if folder not in ids:
                raise ConfigError(f"{where}: {relative} is not in a class folder of {self.image_root} (classes: "
                                  f"{', '.join(self.classes[:8])}{', ...' if len(self.classes) > 8 else ''})")
            if ids[folder] != label:
                raise ConfigError(f"{where}: {relative} is labelled {label}, but its class folder {folder!r} has id "
                                  f"{ids[folder]} (ids are the class folders in sorted order)")
            try:
                check_image_file(path)
            except ConfigError as error:
                raise ConfigError(f"{where}: {error}") from error

    def position(self, index: int) -> str:
        if self.line_numbers[index]:
            return super().position(index)
        return f"class {self.classes[self.labels[index]]}"

    def check_labels(self, class_num: int) -> None:
        """The model has one output per class folder."""
        if class_num != len(self.classes):
            shown = ", ".join(self.classes[:5]) + (", ..." if len(self.classes) > 5 else "")
            raise ConfigError(f"Arch.class_num is {class_num}, but image_root {self.image_root} has {len(self.classes)} "
                              f"class folders ({shown}): set Arch.class_num: {len(self.classes)}")
