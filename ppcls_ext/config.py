"""PaddleClas-format YAML configs: loading, `-o a.b.0.c=value` overrides, and errors that name the key."""
from __future__ import annotations

import ast
import difflib
import logging
import numbers
import os
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import yaml

from .errors import UserError

logger = logging.getLogger("ppcls_ext")


class ConfigError(UserError, ValueError):
    """A configuration problem; the message names the file, key path or value at fault."""


#: how deep a YAML document may nest, how many nodes its aliases may expand to per byte of its text (plus
#: `YAML_NODE_ALLOWANCE`), and the longest number it may write: a "billion laughs" of nested aliases, a
#: 50 000-deep list or a million-digit integer is one line, refused before anything is built
YAML_MAX_DEPTH, YAML_NODES_PER_BYTE, YAML_NODE_ALLOWANCE, YAML_MAX_NUMBER = 100, 2, 1000, 100
_RESOLVER = yaml.resolver.Resolver()
#: libyaml's parser where PyYAML has it: it looks ahead over a deep flow collection 1000x faster than
#: PyYAML's own scanner, and stops at its own nesting limit (1000)
_EVENT_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


def _check_yaml_events(text: str, where: str) -> None:
    """Walk the document's parser events (a flat stream: no recursion, nothing built) counting the nodes
    it holds with every alias expanded; ConfigError when that count, its nesting or a number is too large."""
    limit = YAML_NODES_PER_BYTE * len(text) + YAML_NODE_ALLOWANCE
    anchors: Dict[str, int] = {}
    open_nodes: List[list] = []  # [nodes so far, anchor] of each collection not yet closed
    total = 0

    def close(size: int, anchor: Optional[str]) -> None:
        nonlocal total
        if anchor is not None:
            anchors[anchor] = size
        if open_nodes:
            open_nodes[-1][0] += size
        total += 0 if open_nodes else size
        if (open_nodes[-1][0] if open_nodes else total) > limit:
            raise ConfigError(f"{where}: its aliases expand to more than {limit} values ({YAML_NODES_PER_BYTE} per byte "
                              "of the file): a YAML bomb?")

    try:
        for event in yaml.parse(text, Loader=_EVENT_LOADER):
            if isinstance(event, yaml.CollectionStartEvent):
                if len(open_nodes) >= YAML_MAX_DEPTH:
                    raise ConfigError(f"{where}: nested deeper than {YAML_MAX_DEPTH} levels (line {event.start_mark.line + 1})")
                open_nodes.append([1, event.anchor])
            elif isinstance(event, yaml.CollectionEndEvent):
                close(*open_nodes.pop())
            elif isinstance(event, yaml.ScalarEvent):
                tag = event.tag if event.tag not in (None, "!") else _RESOLVER.resolve(yaml.ScalarNode, event.value, event.implicit)
                if tag in _NUMBER_TAGS and len(event.value) > YAML_MAX_NUMBER:
                    raise ConfigError(f"{where}: a number of {len(event.value)} characters (line {event.start_mark.line + 1})")
                close(1, event.anchor)
            elif isinstance(event, yaml.AliasEvent):
                if any(anchor == event.anchor for _, anchor in open_nodes):
                    raise ConfigError(f"{where}: the alias *{event.anchor} refers to a node that contains it (a cycle; "
                                      f"line {event.start_mark.line + 1})")
                close(anchors.get(event.anchor, 1), None)
    except yaml.YAMLError as error:
        if "maximum nesting depth" in str(error):  # libyaml's own limit (1000), met while it looks ahead
            raise ConfigError(f"{where}: nested deeper than {YAML_MAX_DEPTH} levels") from None
        raise


def load_yaml(text: str, where: str) -> Any:
    """Parse YAML text with PyYAML's safe loader once `_check_yaml_events` has found it bounded. Bounds and
    values that cannot be built (a 13th month) are a ConfigError naming `where`; a syntax error stays a
    `yaml.YAMLError` for the caller to word."""
    _check_yaml_events(text, where)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise
    except Exception as error:  # PyYAML's constructors raise plain errors: the date 2001-13-45, `!!timestamp x`
        raise ConfigError(f"{where}: a value cannot be read ({type(error).__name__}: {error})") from None


def read_yaml_file(path: str) -> Any:
    """The YAML file at `path`, bounded (`load_yaml`); text that is not UTF-8 is a ConfigError."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not a UTF-8 text file ({error.reason} at byte {error.start})") from None
    return load_yaml(text, path)


def _literal(value: Any) -> Any:
    """PaddleClas reads string scalars through `ast.literal_eval`, so `4e-5` (a string to YAML) is a
    float; strings that are not Python literals (`bilinear`, `1.0/255.0`) stay strings."""
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return value
    if isinstance(value, dict):
        return {key: _literal(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_literal(item) for item in value]
    return value


def parse_value(text: str, where: str = "-o value") -> Any:
    """An override value as YAML, then as a Python literal (`64`, `0.1`, `True`, `[1, 2]`, `null`, `./a`);
    text that is not valid YAML stays a string, YAML beyond the bounds of `load_yaml` is a ConfigError."""
    try:
        value = load_yaml(text, where) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return _literal(value)


def apply_override(config: Dict[str, Any], option: str) -> None:
    """Apply one `key.path=value` option; numeric path parts index lists. New mapping keys are created
    (as PaddleClas does, with a log line); a bad index or a path through a scalar is an error."""
    if "=" not in option:
        raise ConfigError(f"-o {option!r}: expected KEY.PATH=VALUE, e.g. Global.epochs=10")
    path, text = option.split("=", 1)
    keys = path.strip().split(".")
    if not path.strip() or any(not key for key in keys):
        raise ConfigError(f"-o {option!r}: empty key in {path!r}")
    node: Any = config
    for depth, key in enumerate(keys):
        where = ".".join(keys[:depth]) or "<config>"
        last = depth == len(keys) - 1
        if isinstance(node, list):
            if not key.lstrip("-").isdigit():
                raise ConfigError(f"-o {option!r}: {where} is a list; {key!r} is not an index")
            index = int(key)
            if not -len(node) <= index < len(node):
                raise ConfigError(f"-o {option!r}: index {index} out of range for {where} (length {len(node)})")
            if last:
                node[index] = parse_value(text, f"-o {path}")
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                if key not in node:
                    logger.info("-o %s: new key %s", option, path)
                node[key] = parse_value(text, f"-o {path}")
            else:
                if node.get(key) is None:
                    node[key] = {}
                node = node[key]
        else:
            raise ConfigError(f"-o {option!r}: {where} is a value ({node!r}), not a section or list")


def load_config(path: str, overrides: Iterable[str] = ()) -> Dict[str, Any]:
    """Read a YAML config file and apply `-o` overrides in order."""
    if os.path.isdir(path):
        raise ConfigError(f"config file {path} is a directory")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        config = read_yaml_file(path)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (Global, Arch, ...)")
    config = _literal(config)
    for option in overrides:
        apply_override(config, option)
    return config


def section(config: Mapping[str, Any], path: str, required: bool = True, default: Any = None) -> Any:
    """The value at dotted `path`, with a ConfigError naming the path when a required one is absent."""
    node: Any = config
    for depth, key in enumerate(path.split(".")):
        if not isinstance(node, Mapping) or key not in node or node[key] is None:
            if required:
                parent = ".".join(path.split(".")[:depth]) or "the config"
                raise ConfigError(f"missing {path!r} (no {key!r} under {parent})")
            return default
        node = node[key]
    return node


def single_entry(item: Any, where: str) -> tuple:
    """A PaddleClas list entry `{Name: {args}}` (or a bare `Name`) as (name, args)."""
    if isinstance(item, str):
        return item, {}
    if not isinstance(item, Mapping) or len(item) != 1:
        raise ConfigError(f"{where}: expected a single-key mapping like {{OpName: {{...}}}}, got {item!r}")
    name, args = next(iter(item.items()))
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        raise ConfigError(f"{where}: arguments of {name} must be a mapping, got {args!r}")
    return name, dict(args)


def closest(name: str, known: Iterable[str], cutoff: float = 0.6) -> Optional[str]:
    """The known name most like `name` (compared case-insensitively), or None."""
    by_folded = {k.lower(): k for k in known}
    match = difflib.get_close_matches(name.lower(), list(by_folded), n=1, cutoff=cutoff)
    return by_folded[match[0]] if match else None


def check_sections(config: Mapping[str, Any], used: Sequence[str], ignored: Optional[Mapping[str, str]] = None,
                   where: str = "the config") -> None:
    """Top-level sections: one that looks like a misspelling of a known section (`Optimiser`, `dataloader`)
    is an error, as its settings would silently not apply; `ignored` ones (known, without effect here,
    with the reason) and other unknown ones are logged."""
    ignored = ignored or {}
    for name in config:
        if name in used:
            continue
        if name in ignored:
            logger.warning("section %s is ignored: %s", name, ignored[name])
            continue
        near = closest(str(name), list(used) + list(ignored), cutoff=0.75)
        if near is not None:
            raise ConfigError(f"unknown section {name!r} in {where}: did you mean {near}? (as it is, its settings "
                              "would not be applied)")
        logger.warning("unknown section %s in %s is ignored (the sections used: %s)", name, where, ", ".join(used))


#: checks of one config value: (value, "Section.key") -> the value, or ConfigError naming the key and value
ValueCheck = Callable[[Any, str], Any]


def _bounded(kind: str, types: tuple, minimum: Optional[float], maximum: Optional[float], optional: bool,
             expected: Optional[str]) -> ValueCheck:
    """A check that the value is of `types` (never a bool) within [minimum, maximum] (NaN is within no bound);
    None passes only when `optional`. `kind` names the expected kind in the error ('an integer'), unless
    `expected` words the whole expectation ('a positive int (set Arch.class_num)')."""
    if expected is None:
        bounds = " and ".join(part for part in (f">= {minimum}" if minimum is not None else "",
                                                 f"<= {maximum}" if maximum is not None else "") if part)
        expected = f"{kind}{' ' + bounds if bounds else ''}{' or null' if optional else ''}"

    def check(value: Any, where: str) -> Any:
        if value is None and optional:
            return value
        if (isinstance(value, bool) or not isinstance(value, types) or (minimum is not None and not value >= minimum)
                or (maximum is not None and not value <= maximum)):
            raise ConfigError(f"{where} must be {expected}, got {value!r}")
        return value

    return check


def integer(minimum: Optional[int] = None, maximum: Optional[int] = None, optional: bool = False,
            expected: Optional[str] = None) -> ValueCheck:
    """A check that the value is an integer (Python's or numpy's; not a bool, not 1.5) within [minimum,
    maximum]; None passes only when `optional`; `expected` rewords the error's expectation."""
    return _bounded("an integer", (numbers.Integral,), minimum, maximum, optional, expected)


def number(minimum: Optional[float] = None, maximum: Optional[float] = None, optional: bool = False,
           expected: Optional[str] = None) -> ValueCheck:
    """A check that the value is a real number (not a bool, not a string) within [minimum, maximum]; None
    passes only when `optional`; `expected` rewords the error's expectation."""
    return _bounded("a number", (numbers.Real,), minimum, maximum, optional, expected)


def boolean(value: Any, where: str) -> Any:
    """A check that the value is True or False (a string such as 'flase' would count as true)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{where} must be True or False, got {value!r}")
    return value


def string(optional: bool = False) -> ValueCheck:
    """A check that the value is a string; None passes only when `optional`."""
    def check(value: Any, where: str) -> Any:
        if not isinstance(value, str) and not (value is None and optional):
            raise ConfigError(f"{where} must be a string{' or null' if optional else ''}, got {value!r}")
        return value

    return check


def one_of(choices: Sequence[Any], expected: Optional[str] = None) -> ValueCheck:
    """A check that the value is one of `choices` (True is not 1 here); `expected` rewords the error's
    expectation (default: 'one of a, b, c')."""
    expected = expected or f"one of {', '.join(map(str, choices))}"

    def check(value: Any, where: str) -> Any:
        if not any(value == choice and isinstance(value, bool) == isinstance(choice, bool) for choice in choices):
            raise ConfigError(f"{where} must be {expected}, got {value!r}")
        return value

    return check


def passes(check: ValueCheck, value: Any) -> bool:
    """Whether `check` accepts `value` (for a caller that words its own error)."""
    try:
        check(value, "")
    except ConfigError:
        return False
    return True


def int_list(length: Optional[int], minimum: int = 1, maximum: Optional[int] = None, optional: bool = True,
             expected: Optional[str] = None) -> ValueCheck:
    """A check for a list of `length` integers (any length but 0 when None) within [minimum, maximum], e.g.
    Global.image_shape [3, 224, 224]; None passes when `optional`; `expected` rewords the error."""
    if expected is None:
        bounds = f">= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
        expected = f"a list of {length if length is not None else 'one or more'} integers {bounds}"
    element = integer(minimum, maximum)

    def check(value: Any, where: str) -> Any:
        if value is None and optional:
            return value
        if (not isinstance(value, (list, tuple)) or not value or (length is not None and len(value) != length)
                or not all(passes(element, item) for item in value)):
            raise ConfigError(f"{where} must be {expected}, got {value!r}")
        return value

    return check


def number_list(minimum: Optional[float] = None, optional: bool = False, expected: Optional[str] = None) -> ValueCheck:
    """A check for a non-empty list of numbers >= `minimum` (e.g. Piecewise's `values`); None passes only
    when `optional`; `expected` rewords the error."""
    expected = expected or f"a list of numbers{f' >= {minimum}' if minimum is not None else ''}"
    element = number(minimum)

    def check(value: Any, where: str) -> Any:
        if value is None and optional:
            return value
        if not isinstance(value, (list, tuple)) or not value or not all(passes(element, item) for item in value):
            raise ConfigError(f"{where} must be {expected}, got {value!r}")
        return value

    return check


def check_values(values: Any, checks: Mapping[str, ValueCheck], where: str) -> None:
    """Apply `checks[key]` to each key of the mapping `values` that has one; errors name `where.key`.
    Anything but a mapping is left to the code that reads it."""
    if not isinstance(values, Mapping):
        return
    for key, value in values.items():
        if key in checks:
            checks[key](value, f"{where}.{key}")


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def as_list(value: Any) -> List[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]
