"""The models of PaddleClas's `Arch.name: DistillationModel` section: `models: [{Teacher: {...}}, {Student:
{...}}]`, each built by our zoo or, for names it lacks (ResNet34, MobileNetV3_*, PPLCNet_*, ...), by
PaddleClas's `arch` module (the `paddleclas` wheel, else a source checkout), each with its own
`pretrained` (True, or any weights file we read); `freeze_params_list`, `pretrained_list` and
`infer_model_name` as PaddleClas reads them."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import paddle
import paddle.nn as nn

from ... import registry
from ...config import ConfigError, check_values, integer
from ...weights import WeightsFile, load_weights, read_weights_file
from ..log import logger

ARCH_KEYS = {"name", "models", "class_num", "pretrained_list", "freeze_params_list", "infer_model_name", "use_sync_bn"}
PADDLECLAS_ARCH_MODULES = ("paddleclas.ppcls.arch", "ppcls.arch")


@dataclass
class Member:
    """One entry of `Arch.models`: its name in the run (Teacher, Student, ...), its `Arch`-style options,
    whether it is frozen, and where its options live in the config (for messages)."""

    name: str
    options: Dict[str, Any]
    frozen: bool
    where: str

    @property
    def model_name(self) -> str:
        return str(self.options["name"])

    @property
    def class_num(self) -> int:
        return int(self.options.get("class_num", 1000))


def _aligned(arch: Mapping[str, Any], key: str, count: int) -> Optional[List[Any]]:
    value = arch.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != count:
        raise ConfigError(f"Arch.{key}: expected a list of {count} entries, one per model in Arch.models, got {value!r}")
    return value


def parse_members(arch: Mapping[str, Any]) -> Tuple[List[Member], str]:
    """(members in config order, infer_model_name) of a DistillationModel `Arch`, checked."""
    unknown = sorted(set(arch) - ARCH_KEYS)
    if unknown:
        raise ConfigError(f"Arch.{unknown[0]}: not a DistillationModel key (known: {', '.join(sorted(ARCH_KEYS))})")
    models = arch.get("models")
    if not isinstance(models, list) or not models:
        raise ConfigError("Arch.models: a DistillationModel needs a list of models, e.g. "
                          "[{Teacher: {name: EfficientNetB0, pretrained: teacher.pdparams}}, {Student: {name: MicroNet_M0}}]")
    frozen = _aligned(arch, "freeze_params_list", len(models)) or [False] * len(models)
    pretrained = _aligned(arch, "pretrained_list", len(models)) or [None] * len(models)
    members: List[Member] = []
    for index, entry in enumerate(models):
        if not isinstance(entry, Mapping) or len(entry) != 1:
            raise ConfigError(f"Arch.models.{index}: expected one {{Name: {{name: ModelName, ...}}}} entry, got {entry!r}")
        name, options = next(iter(entry.items()))
        where = f"Arch.models.{index}.{name}"
        if not isinstance(options, Mapping) or not options.get("name"):
            raise ConfigError(f"{where}.name: missing (e.g. {{name: MicroNet_M0}})")
        if any(member.name == name for member in members):
            raise ConfigError(f"{where}: the name {name!r} is used twice in Arch.models")
        options = dict(options)
        check_values(options, {"class_num": integer(1)}, where)
        if pretrained[index] is not None:
            options["pretrained"] = pretrained[index]
        members.append(Member(str(name), options, bool(frozen[index]), where))
    names = [member.name for member in members]
    infer_name = arch.get("infer_model_name") or ("Student" if "Student" in names else None)
    if infer_name not in names:
        raise ConfigError(f"Arch.infer_model_name: {'missing' if infer_name is None else repr(infer_name)}; name the model "
                          f"to evaluate and export, one of {', '.join(names)}")
    return members, str(infer_name)


def paddleclas_arch() -> Any:
    """PaddleClas's `arch` module: the `paddleclas` wheel's, else a source checkout's on sys.path."""
    for module in PADDLECLAS_ARCH_MODULES:
        try:
            return importlib.import_module(module)
        except ImportError:
            continue
    return None


def _paddleclas_model(member: Member) -> nn.Layer:
    """A model of PaddleClas's zoo (a name ours lacks); `pretrained` True lets PaddleClas download its
    official weights (as its own tools do), a file is read by ours."""
    arch = paddleclas_arch()
    if arch is None or not hasattr(arch, member.model_name):
        why = ("neither ppcls_ext's zoo nor PaddleClas's arch has it" if arch is not None else
               "ppcls_ext's zoo lacks it and PaddleClas, whose zoo is tried next, is not installed (pip install paddleclas)")
        raise ConfigError(f"{member.where}.name: unknown model {member.model_name!r}: {why} "
                          f"(ppcls_ext's models: {', '.join(registry.list_models()[:6])}, ...)")
    options = {key: value for key, value in member.options.items() if key != "name"}
    pretrained = options.pop("pretrained", False)
    try:
        model = getattr(arch, member.model_name)(pretrained=pretrained is True, **options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{member.where}: PaddleClas's {member.model_name}: {error}") from error
    if pretrained and pretrained is not True:
        weights = read_weights_file(pretrained)
        if weights.foreign is not None:
            raise ConfigError(f"{member.where}.pretrained: {weights.label}: PaddleClas's {member.model_name} reads "
                              f"Paddle (.pdparams) weights only")
        load_member_weights(member.name, model, weights.state or {}, weights.label)
    return model


def build_member(member: Member) -> nn.Layer:
    """The model of one `Arch.models` entry with its own `pretrained` weights; frozen ones are put in eval
    mode with no gradients."""
    if member.model_name not in registry.list_models():
        model = _paddleclas_model(member)
    else:
        options = {key: value for key, value in member.options.items() if key != "name"}
        try:
            options = registry.paddleclas_arch_options(member.model_name, options)
            model = registry.create_model(member.model_name, **options)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{member.where}: {error}") from error
    if member.frozen:
        model.eval()
        for param in model.parameters():
            param.stop_gradient = True
    return model


class DistillationModel(nn.Layer):
    """Models of a distillation run by name, as PaddleClas's class holds them (state-dict keys
    `<Name>.<key>`); `forward` returns {name: output}. The engine's holds the trained models only."""

    def __init__(self, members: Mapping[str, nn.Layer]):
        super().__init__()
        self.names = list(members)
        for name, model in members.items():
            self.add_sublayer(name, model)

    def member(self, name: str) -> nn.Layer:
        return getattr(self, name)

    def forward(self, x: paddle.Tensor) -> Dict[str, Any]:
        return {name: self.member(name)(x) for name in self.names}

    @property
    def classifier_prefixes(self) -> Tuple[str, ...]:
        """Each member's classifier prefixes under its name (see `ImageClassifier.classifier_prefixes`)."""
        return tuple(f"{name}.{prefix}" for name in self.names
                     for prefix in getattr(self.member(name), "classifier_prefixes", ()))

    def convert_state_dict(self, state_dict: Mapping[str, object]) -> Dict[str, object]:
        """Each member's part renamed by the member (PaddleClas layouts of our models); other keys kept."""
        converted = {k: v for k, v in state_dict.items() if not any(k.startswith(f"{n}.") for n in self.names)}
        for name in self.names:
            part = {k[len(name) + 1:]: v for k, v in state_dict.items() if k.startswith(f"{name}.")}
            convert = getattr(self.member(name), "convert_state_dict", dict)
            converted.update({f"{name}.{k}": v for k, v in convert(part).items()})
        return converted


def load_member_weights(name: str, model: nn.Layer, state: Mapping[str, object], source: str,
                        allow_classifier_mismatch: bool = True) -> None:
    """Load `state` (the model's own keys) into the member `name`, strictly (see `weights.load_weights`)."""
    load_weights(DistillationModel({name: model}), {f"{name}.{k}": v for k, v in state.items()}, source,
                 allow_classifier_mismatch)


def prefixed_parts(state: Mapping[str, object], names: Sequence[str]) -> Dict[str, Dict[str, object]]:
    """{member name: its tensors without the `<name>.` prefix} for the members `state` holds."""
    parts: Dict[str, Dict[str, object]] = {}
    for key, value in state.items():
        name = key.split(".", 1)[0]
        if name in names and "." in key:
            parts.setdefault(name, {})[key[len(name) + 1:]] = value
    return parts


def load_run_weights(models: Mapping[str, nn.Layer], weights: WeightsFile, all_names: Sequence[str],
                     allow_classifier_mismatch: bool) -> List[str]:
    """`Global.pretrained_model` of a DistillationModel run: a file with `<Name>.`-prefixed keys (a checkpoint
    of such a run, ours or PaddleClas's) loads into the built `models` it holds; with one model built
    (evaluation, inference, export), a file of that model alone (no prefix of `all_names`) loads too.
    Returns the members loaded."""
    names = list(models)
    state = weights.state_for(next(iter(models.values()))) if weights.foreign is not None else dict(weights.state or {})
    every = prefixed_parts(state, all_names)
    parts = {name: part for name, part in every.items() if name in models}
    if not every and len(models) == 1:
        parts = {names[0]: state}
    if not parts:
        held = sorted({k.split(".", 1)[0] for k in state})[:4]
        raise ConfigError(f"Global.pretrained_model={weights.label} holds no weights of {', '.join(names)} (its keys start "
                          f"with {', '.join(held)}); give each model its weights with Arch.models.N.<Name>.pretrained")
    for name, part in parts.items():
        load_member_weights(name, models[name], part, weights.label, allow_classifier_mismatch)
    logger.info("loaded %s from %s", ", ".join(parts), weights.label)
    return list(parts)
