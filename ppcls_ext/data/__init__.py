"""Data pipeline pieces that speak PaddleClas: the ImageNet-format and class-per-folder datasets and their
loader, image transform ops, batch ops (mixup/cutmix) and their builders, and the offline demo dataset."""
from .batch_ops import BatchCompose, CutmixOperator, MixupOperator, OpSampler, build_batch_ops
from .registries import BATCH_OPS, DATASETS, TRANSFORM_OPS
from .transforms import (
    AutoAugment,
    Compose,
    CropImage,
    CropImageAtRatio,
    DecodeImage,
    NormalizeImage,
    RandAugment,
    RandAugmentV2,
    RandCropImage,
    RandFlipImage,
    RandomErasing,
    ResizeImage,
    ToCHWImage,
    build_transforms,
)
from .dataset import ImageNetDataset, IndexedDataset, read_label_file
from .image_folder import ImageFolderDataset, scan_image_folder
from .demo import make_digits_dataset
from .loader import WorkerSeeder, build_dataloader
