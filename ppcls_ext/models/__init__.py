"""The model zoo as plain Paddle layers: no PaddleClas import, no registry."""
from .base import FeatureExtractor, FeatureInfo, ImageClassifier
from .declaration import DeclarationError, FamilyDeclaration, VariantDeclaration
from .efficientnet import (
    EFFICIENTNET,
    EFFICIENTNET_B0_STAGES,
    EFFICIENTNET_LITE,
    EFFICIENTNET_LITE_SCALING,
    EFFICIENTNET_SCALING,
    EfficientNet,
    FusedMBConv,
    MBConv,
    Scaling,
    StageSpec,
    compound_scaling,
    efficientnet,
    efficientnet_lite,
    efficientnet_variant,
)
from .efficientnet_v2 import EFFICIENTNET_V2, EFFICIENTNET_V2_VARIANTS, EfficientNetV2, efficientnet_v2
from .layers import ConvBNAct, DropPath, SqueezeExcite, make_divisible, round_repeats
from .micronet import (
    MICRONET,
    MICRONET_SPECS,
    ChannelShuffle,
    DepthSpatialSepConv,
    DYMicroBlock,
    DYShiftMax,
    GroupConv,
    MaxGroupPooling,
    MicroBlockSpec,
    MicroNet,
    MicroNetSpec,
    SpatialSepConvSF,
    micronet,
)
