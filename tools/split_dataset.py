"""python tools/split_dataset.py --dataset_dir DIR [--val_value 0.2] [--test_value 0] [--seed 0] [--save_dir DIR]
(see ppcls_ext.cli.split_dataset): a class-per-folder dataset -> train_list.txt, val_list.txt, label_list.txt."""
from ppcls_ext.cli.split_dataset import main

if __name__ == "__main__":
    raise SystemExit(main())
