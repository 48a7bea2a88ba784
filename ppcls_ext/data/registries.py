"""The registries of the data parts a config names: `transform_ops`, `batch_transform_ops` and datasets."""
from ..config_registry import ConfigRegistry

TRANSFORM_OPS = ConfigRegistry("transform op")
BATCH_OPS = ConfigRegistry("batch op")
#: a dataset reports a bad label file or image by its file and line, not by the config path
DATASETS = ConfigRegistry("dataset", name_key="name", errors_name_their_source=True)
