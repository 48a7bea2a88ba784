"""One registry class for every part a config names (transform and batch ops, datasets, losses, metrics,
optimizers, learning-rate schedules): `register`, `names`, and a `build` that checks the config's arguments
against the constructor before calling it, with the config path in every error.

Errors of `build`, each a ConfigError naming the path: an unknown name (the valid ones listed, a close one
suggested), an argument the constructor does not take (likewise), a missing one, a value its registered
check refuses, and a ValueError the constructor raises. A TypeError raised inside a constructor is a bug
in that constructor, not a bad argument (the signature was checked first), and passes on as it is.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Tuple

from .config import ConfigError, ValueCheck, closest, single_entry

#: how alike an unknown name must be to a registered one to be suggested (FocalLoss is not CELoss)
NAME_CUTOFF = 0.75
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class Registered(NamedTuple):
    """A part: its constructor, and the config keys it takes with their checks (None: the keywords of the
    constructor's signature, which checks its values itself)."""

    target: Callable[..., Any]
    arguments: Optional[Mapping[str, Optional[ValueCheck]]]


class ConfigRegistry(Mapping[str, Callable[..., Any]]):
    """Name -> constructor of one kind of part, read as a mapping (in registration order).

    `kind` words the part in errors ('transform op'). A config entry is PaddleClas's `{Name: {args}}` (or
    a bare `Name`), or with `name_key` a mapping that holds the name under that key beside the arguments
    (`{name: Momentum, momentum: 0.9}`). `shared` keys (`name_key` form) are settings every part of the
    kind takes that the caller reads itself (an optimizer's `lr`): checked, listed among the valid keys,
    not passed on. `sort_names` lists the valid names sorted in errors, else in registration order. With
    `errors_name_their_source`, a ConfigError a constructor raises passes on unprefixed: it names the file
    and line at fault (a dataset's label file)."""

    def __init__(self, kind: str, name_key: Optional[str] = None, shared: Optional[Mapping[str, ValueCheck]] = None,
                 sort_names: bool = True, errors_name_their_source: bool = False):
        self.kind = kind
        self.name_key = name_key
        self.shared = dict(shared or {})
        self.sort_names = sort_names
        self.errors_name_their_source = errors_name_their_source
        self._parts: Dict[str, Registered] = {}

    def register(self, target: Optional[Callable[..., Any]] = None, *, name: Optional[str] = None,
                 arguments: Optional[Mapping[str, Optional[ValueCheck]]] = None) -> Any:
        """Register `target` under `name` (default: its own name); usable as `@registry.register` or
        `@registry.register(name=..., arguments=...)`. `arguments` limits the config keys to its own, each
        checked by its ValueCheck (None: unchecked), for a constructor that takes more than a config may set
        or does not check its values (Paddle's optimizers). Returns `target`."""

        def add(part: Callable[..., Any]) -> Callable[..., Any]:
            key = name or part.__name__
            if key in self._parts and self._parts[key].target is not part:
                raise ValueError(f"{self.kind} {key!r} is registered twice ({self._parts[key].target!r}, {part!r})")
            self._parts[key] = Registered(part, None if arguments is None else dict(arguments))
            return part

        return add if target is None else add(target)

    def names(self) -> List[str]:
        """The registered names, in registration order."""
        return list(self._parts)

    def __getitem__(self, name: str) -> Callable[..., Any]:
        return self._parts[name].target

    def __iter__(self) -> Iterator[str]:
        return iter(self._parts)

    def __len__(self) -> int:
        return len(self._parts)

    def build(self, spec: Any, where: str, *, wrap: Optional[Callable[[Callable[..., Any]], Callable[..., Any]]] = None,
              **injected: Any) -> Any:
        """The part a config entry names, built with its arguments plus `injected` ones (set by the caller,
        e.g. the batch ops' class_num; not config keys). `wrap` is applied to the constructor first (e.g.
        a mixin subclass). `where` is the entry's config path."""
        name, args, args_where = self._read(spec, where)
        part = self._parts[name]
        check_arguments(part.target, args, where, name, accepted=part.arguments, also_valid=self.shared,
                        injected=injected)
        for key, value in args.items():
            check = (part.arguments or {}).get(key)
            if check is not None:
                check(value, f"{args_where}.{key}")
        constructor = part.target if wrap is None else wrap(part.target)
        try:
            return constructor(**args, **injected)
        except ValueError as error:  # ConfigError included: the constructor refused a value
            if isinstance(error, ConfigError) and self.errors_name_their_source:
                raise
            raise ConfigError(f"{where}: {error}") from error

    def _read(self, spec: Any, where: str) -> Tuple[str, Dict[str, Any], str]:
        """(registered name, arguments, the path their checks name) of a config entry."""
        if self.name_key is None:
            name, args = single_entry(spec, where)
            self._check_name(name, where)
            return name, args, f"{where}.{name}"
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}: expected a mapping with {self.name_key}: <{self.kind}> and its settings, "
                              f"got {spec!r}")
        args = dict(spec)
        name = args.pop(self.name_key, None)
        if name is None:
            raise ConfigError(f"{where}.{self.name_key} is missing (the {self.kind}: {self._listing()})")
        self._check_name(name, f"{where}.{self.name_key}")
        for key in [key for key in args if key in self.shared]:
            self.shared[key](args.pop(key), f"{where}.{key}")
        return name, args, where

    def _check_name(self, name: Any, where: str) -> None:
        if isinstance(name, str) and name in self._parts:
            return
        near = closest(name, self._parts, NAME_CUTOFF) if isinstance(name, str) else None
        raise ConfigError(f"{where}: unknown {self.kind} {name!r}; valid: {self._listing()}"
                          + (f"; did you mean {near}?" if near else ""))

    def _listing(self) -> str:
        return ", ".join(sorted(self._parts) if self.sort_names else self._parts)


def check_arguments(target: Callable[..., Any], args: Mapping[str, Any], where: str, name: Optional[str] = None,
                    accepted: Optional[Iterable[str]] = None, also_valid: Iterable[str] = (),
                    injected: Iterable[str] = ()) -> None:
    """A ConfigError naming `where` unless `target(**args, **injected)` fits its signature: every key one it
    takes (or one of `accepted`, where given), none it needs missing. `also_valid` keys are listed as valid
    in the error (settings the caller reads itself). `name` words the target (default: its own name)."""
    name = name or getattr(target, "__name__", repr(target))
    parameters = inspect.signature(target).parameters
    if accepted is not None:
        accepted, open_ended = list(accepted), False
    else:
        accepted = [key for key, p in parameters.items() if p.kind in _NAMED and key not in injected]
        open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = [] if open_ended else sorted((key for key in args if key not in accepted), key=str)
    if unknown:
        valid = accepted + list(also_valid)
        near = closest(str(unknown[0]), valid)
        raise ConfigError(f"{where}: {name} has no argument {', '.join(map(repr, unknown))}; valid: "
                          f"{', '.join(valid) or '(none)'}" + (f"; did you mean {near}?" if near else ""))
    missing = [key for key, p in parameters.items() if p.kind in _NAMED and p.default is inspect.Parameter.empty
               and key not in args and key not in injected]
    if missing:
        raise ConfigError(f"{where}: {name} needs argument {', '.join(map(repr, missing))}")
