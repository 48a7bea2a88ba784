"""The class names of a model trained on class folders (`ImageFolderDataset`): written once, by training,
into the output folder as PaddleClas's class-id map (`label_list.txt`, `<id> <name>` lines), and used as
`Infer.PostProcess.class_id_map_file` in every mode, so that tools/infer.py and the export's inference.yml
(hence deploy/python/predict_cls.py) name the user's classes.

A `class_id_map_file` the config gives is kept when it names exactly the folders' ids 0..n-1 (display
names for folder names, e.g. ImageNet's synset folders); one for another class count (such as the ImageNet
list an ImageNet config carries) is replaced by the folders' map, with a warning."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

from ..config import ConfigError
from ..data.image_folder import class_map_text, folder_classes, write_text_file
from ..data.split import CLASS_MAP_FILE
from ..serving.postprocess import read_label_names, resolve_label_file
from .log import logger

FOLDER_DATASET = "ImageFolderDataset"


def folder_datasets(config: Dict[str, Any]) -> List[Tuple[str, str]]:
    """(config path, image_root) of each DataLoader dataset (Train first) that is an ImageFolderDataset."""
    found = []
    for mode in ("Train", "Eval"):
        dataset = ((config.get("DataLoader") or {}).get(mode) or {}).get("dataset") or {}
        if dataset.get("name") == FOLDER_DATASET:
            found.append((f"DataLoader.{mode}.dataset.image_root", str(dataset.get("image_root"))))
    return found


def _folders_classes(datasets: List[Tuple[str, str]]) -> Optional[List[str]]:
    """The class names of the class folders that exist (None if none does); they must agree."""
    named = [(where, root, folder_classes(root, where)) for where, root in datasets if os.path.isdir(root)]
    for where, root, classes in named[1:]:
        if classes != named[0][2]:
            raise ConfigError(f"{where} {root} has classes {classes[:6]}, but {named[0][0]} {named[0][1]} has "
                              f"{named[0][2][:6]}: both must hold the same class folders")
    return named[0][2] if named else None


def use_folder_class_names(config: Dict[str, Any], mode: str, output_dir: str) -> Optional[str]:
    """With an ImageFolderDataset in the config: training writes `<output_dir>/label_list.txt` from the class
    folders; every mode points `Infer.PostProcess.class_id_map_file` at the class map to use (see the module
    docstring) and returns it. Without one: None, the config untouched."""
    datasets = folder_datasets(config)
    if not datasets:
        return None
    recorded = os.path.join(output_dir, CLASS_MAP_FILE)
    classes = _folders_classes(datasets)
    if mode == "train" or not os.path.isfile(recorded):
        if classes is None:
            raise ConfigError(f"{datasets[0][0]}: folder not found: {datasets[0][1]}, and no class map {recorded} from "
                              "training: the class names are unknown; give -o Infer.PostProcess.class_id_map_file=PATH")
        write_text_file(recorded, class_map_text(classes))
        logger.info("class ids of %s %s: %s", datasets[0][0], datasets[0][1], recorded)
    names = read_label_names(recorded)
    if classes is not None and classes != [names[i] for i in sorted(names)]:
        logger.warning("the class folders of %s differ from the class map %s written by training; the model's "
                       "outputs are named by that map", datasets[0][1], recorded)
    infer = config["Infer"] = dict(config.get("Infer") or {})
    post = infer["PostProcess"] = dict(infer.get("PostProcess") or {})
    given = post.get("class_id_map_file")
    if given and _names_ids(given, len(names)):
        return given
    if given:
        logger.warning("Infer.PostProcess.class_id_map_file %s does not name the %d classes of %s: the class folders' "
                       "names (%s) are used instead", given, len(names), datasets[0][1], recorded)
    post["class_id_map_file"] = recorded
    return recorded


def _names_ids(path: str, count: int) -> bool:
    """Whether the class-id map `path` exists and names exactly the ids 0..count-1."""
    try:
        return set(read_label_names(resolve_label_file(path))) == set(range(count))
    except ConfigError:
        return False
