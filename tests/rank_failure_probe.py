"""tools/train.py in which the data of one rank fails, for test_failure_edges.py to run under
`paddle.distributed.launch`: on rank $FAIL_RANK, reading the training sample number $FAIL_AT raises the
DataError that ten unreadable images in a row raise (the images themselves would fail on every rank)."""
import os
import sys

import paddle.distributed as dist

from ppcls_ext.cli import main
from ppcls_ext.data.dataset import DataError, ImageNetDataset

reads = []
read_sample = ImageNetDataset.__getitem__


def failing_read(dataset, index):
    reads.append(index)
    if dataset.skip_broken and dist.get_rank() == int(os.environ["FAIL_RANK"]) and len(reads) == int(os.environ["FAIL_AT"]):
        raise DataError(f"{dataset.label_path}: 10 unreadable training images in a row, the last line 7 (injected on "
                        f"rank {dist.get_rank()})")
    return read_sample(dataset, index)


ImageNetDataset.__getitem__ = failing_read

if __name__ == "__main__":
    sys.exit(main("train"))
