"""Image files in a folder (the extensions of `image_io.IMAGE_EXTENSIONS`), walked in one fixed order."""
from __future__ import annotations

import os
from typing import List

from .image_io import IMAGE_EXTENSIONS


def walk_images(folder: str) -> List[str]:
    """The files with image extensions under `folder`, recursively, sorted by folder then name, leaving
    out hidden files and folders (such as macOS's '._photo.jpg' resource forks, which are not images,
    and .DS_Store)."""
    images: List[str] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        images += [os.path.join(root, f) for f in sorted(files)
                   if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    return images
