"""Value specs: what a config key takes (kinds, a range, null or not), and the checks that use them.

Shared by the config's own checks (po/run/values.py: every key of po's groups) and by `po.config.instantiate`,
which checks a loss's keys against its constructor's annotations (`check_arguments`) before calling it. A failed
check is one `ConfigError` naming the key, the value and what to use.
"""

from __future__ import annotations

import collections.abc
import enum
import functools
import inspect
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable

from po.errors import ConfigError


@dataclass(frozen=True)
class Spec:
    """What a key takes: value kinds ("bool", "int", "number", "str", "list", "dict"), a range, and null or not."""

    kinds: frozenset[str]
    what: str                                        # in words, for the message: "an integer > 0"
    ok: Callable[[Any], bool] = lambda value: True   # the range, for a value of an accepted kind
    nullable: bool = False

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        kind = kind_of(value)
        if kind not in self.kinds and not (kind in ("int", "float") and "number" in self.kinds):
            return False
        if kind == "float" and math.isnan(value):
            return False
        return self.ok(value)

    def describe(self) -> str:
        return f"{self.what} (or null)" if self.nullable else self.what


def kind_of(value: Any) -> str:
    for kind, types_ in (("bool", bool), ("int", int), ("float", float), ("str", str), ("list", (list, tuple)),
                         ("dict", dict)):
        if isinstance(value, types_):
            return kind
    return "null" if value is None else "other"


def boolean() -> Spec:
    return Spec(frozenset({"bool"}), "true or false")


def _bounds(ge: float | None, gt: float | None, le: float | None, lt: float | None) -> tuple[str, Callable]:
    parts = [f"{op} {bound if isinstance(bound, int) else format(bound, 'g')}"
             for op, bound in ((">=", ge), (">", gt), ("<=", le), ("<", lt)) if bound is not None]

    def ok(v: Any) -> bool:
        return ((ge is None or v >= ge) and (gt is None or v > gt) and (le is None or v <= le)
                and (lt is None or v < lt))

    return " and ".join(parts), ok


def integer(ge: int | None = None, gt: int | None = None, le: int | None = None, nullable: bool = False) -> Spec:
    text, ok = _bounds(ge, gt, le, None)
    return Spec(frozenset({"int"}), f"an integer {text}".strip(), ok, nullable)


def number(ge: float | None = None, gt: float | None = None, lt: float | None = None, nullable: bool = False) -> Spec:
    """A finite number (an integer is one too): inf and NaN are never a useful learning rate, beta or ratio."""
    text, ok = _bounds(ge, gt, None, lt)
    return Spec(frozenset({"number"}), f"a finite number {text}".strip(), lambda v: math.isfinite(v) and ok(v),
                nullable)


def choice(*options: Any, nullable: bool = False) -> Spec:
    shown = ", ".join(show(o) for o in options)
    return Spec(frozenset(kind_of(o) for o in options), f"one of {shown}", lambda v: v in options, nullable)


def text(nullable: bool = False, what: str = "a string") -> Spec:
    return Spec(frozenset({"str"}), what, nullable=nullable)


def container(kind: str, what: str, nullable: bool = False) -> Spec:
    return Spec(frozenset({kind}), what, nullable=nullable)


def either(specs: list[Spec], nullable: bool) -> Spec:
    return Spec(frozenset().union(*(s.kinds for s in specs)), " or ".join(s.what for s in specs),
                lambda v: any(s.accepts(v) for s in specs), nullable)


def show(value: Any) -> str:
    """A value as the user would type it on the command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return value if value and not re.search(r"\s", value) else repr(value)
    return str(value)


def spec_of_annotation(tp: Any) -> Spec | None:
    """The spec a type annotation means, or None when it says nothing po can check (Any, a class, ...)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        nullable = len(members) < len(args)
        enums = [a for a in members if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums:  # e.g. `SchedulerType | str`: the string must be one of the enum's names
            return choice(*(e.value for e in enums[0]), nullable=nullable)
        specs = [spec_of_annotation(a) for a in members]
        if not specs or any(s is None for s in specs):
            return None
        return either(specs, nullable) if len(specs) > 1 else nullable_spec(specs[0], nullable)
    if origin is typing.Literal:
        return choice(*args)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return choice(*(e.value for e in tp))
    simple = {bool: boolean, int: integer, float: number, str: text}
    if tp in simple:
        return simple[tp]()
    if tp in (list, tuple) or origin in (list, tuple, collections.abc.Sequence):
        return container("list", "a list")
    if tp is dict or origin in (dict, collections.abc.Mapping):
        return container("dict", "a mapping")
    return None


def nullable_spec(spec: Spec, nullable: bool) -> Spec:
    return Spec(spec.kinds, spec.what, spec.ok, nullable) if nullable else spec


@dataclass(frozen=True)
class Constructor:
    """What a `_target_` class takes: typed parameters, all parameter names, and whether it takes **kwargs."""

    name: str
    specs: dict[str, Spec]
    params: tuple[str, ...]
    open_kwargs: bool


@functools.cache
def constructor_of(cls: type) -> Constructor:
    signature = inspect.signature(cls)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # annotations naming what cannot be imported here: check names only
        hints = {}
    params = tuple(n for n, p in signature.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
    specs = {n: s for n in params if n in hints and (s := spec_of_annotation(hints[n])) is not None}
    open_kwargs = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
    return Constructor(f"{cls.__module__}.{cls.__qualname__}", specs, params, open_kwargs)


def check_value(key: str, value: Any, spec: Spec) -> None:
    if not spec.accepts(value):
        hint = ""
        if spec.kinds == {"str"} and kind_of(value) in ("int", "float", "bool"):  # Hydra parsed it as a number
            hint = f"; quote a string that looks like a number: '{key}=\"{show(value)}\"'"
        raise ConfigError(f"{key}={show(value)}: use {spec.describe()}{hint}")


def check_arguments(group: str, values: dict[str, Any], cls: type) -> None:
    """The keys of a `loss`/`weighting` group against `cls`'s constructor: known names, annotated types. Called
    before the constructor, so `loss.beta=abc` or `loss.length_normalize=no` never reach it."""
    constructor = constructor_of(cls)
    for name, value in values.items():
        key = f"{group}.{name}"
        if name not in constructor.params and not constructor.open_kwargs:
            raise ConfigError(f"{key} is not a parameter of {constructor.name} (its parameters: "
                              f"{', '.join(constructor.params) or 'none'}); remove it with ~{key} or choose "
                              f"another {group}")
        if name in constructor.specs:
            check_value(key, value, constructor.specs[name])
