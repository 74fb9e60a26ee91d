"""Typed records: the dataclasses of doctor's path, without the cost of the dataclasses module.

Why: `@dataclass` generates and compiles three functions per class at import time (about 0.25 ms a class)
and the module itself imports inspect (ast, dis, tokenize: ~5 ms). `doctor` needs some forty such
classes on a 0.1 s budget, so that was a fifth of its time. A `@record` class over `Record` declares
its fields exactly as a dataclass does (annotations, defaults, `field(default_factory=...)`); type
checkers see `dataclasses.dataclass` (the TYPE_CHECKING branch below), and at run time the shared
methods below, compiled once into this file's bytecode, do the work.

Semantics are those of `@dataclass` with its defaults: positional or keyword arguments in field order,
`default`/`default_factory`, a TypeError for a missing, repeated or unknown argument, equality by exact
class and field values, unhashable, the repr. Use this module's `fields`, `asdict`, `replace` and
`is_record` (they also accept real dataclasses). Not supported (nothing here needs them):
`__post_init__`, InitVar, ClassVar fields, `field(init/repr/compare=...)`, frozen, slots.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Dict, Tuple

__all__ = ["MISSING", "Field", "Record", "asdict", "defer", "field", "fields", "hints", "is_record", "record", "replace"]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class Field:
    """One declared field: name, its annotation (a string under `from __future__ import annotations`), default."""

    __slots__ = ("name", "type", "default", "default_factory")

    def __init__(self, default: Any = MISSING, default_factory: Any = MISSING):
        if default is not MISSING and default_factory is not MISSING:
            raise ValueError("cannot specify both default and default_factory")
        self.name = ""
        self.type: Any = None
        self.default = default
        self.default_factory = default_factory

    def __repr__(self) -> str:
        return f"Field(name={self.name!r}, type={self.type!r})"


class Record:
    """The shared methods; the per-class plan (`__record_fields__`) is set by `record`."""

    __record_fields__: Tuple[Field, ...] = ()
    __hash__ = None  # type: ignore[assignment]  # as @dataclass(eq=True) leaves it: a value, not a key

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        plan = type(self).__record_fields__
        if len(args) > len(plan):
            self._call_error(args, kwargs)
        values = self.__dict__
        used = 0
        for i, f in enumerate(plan):
            name = f.name
            if i < len(args):
                if name in kwargs:
                    self._call_error(args, kwargs)
                values[name] = args[i]
            elif name in kwargs:
                values[name] = kwargs[name]
                used += 1
            elif f.default is not MISSING:
                values[name] = f.default
            elif f.default_factory is not MISSING:
                values[name] = f.default_factory()
            else:
                self._call_error(args, kwargs)
        if used != len(kwargs):
            self._call_error(args, kwargs)

    def _call_error(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        """The TypeError Python raises for a generated __init__, in its order: each keyword in turn (unknown,
        or given positionally too), then too many positional arguments, then the missing ones."""
        plan = type(self).__record_fields__
        names = [f.name for f in plan]
        where = f"{type(self).__name__}.__init__()"
        for key in kwargs:
            if key not in names:
                raise TypeError(f"{where} got an unexpected keyword argument '{key}'")
            if names.index(key) < len(args):
                raise TypeError(f"{where} got multiple values for argument '{key}'")
        if len(args) > len(plan):
            required = sum(1 for f in plan if f.default is MISSING and f.default_factory is MISSING)
            takes = f"{len(plan) + 1}" if required == len(plan) else f"from {required + 1} to {len(plan) + 1}"
            raise TypeError(f"{where} takes {takes} positional arguments but {len(args) + 1} were given")
        missing = [f.name for f in plan[len(args):]
                   if f.name not in kwargs and f.default is MISSING and f.default_factory is MISSING]
        if len(missing) == 1:
            raise TypeError(f"{where} missing 1 required positional argument: '{missing[0]}'")
        quoted = [f"'{m}'" for m in missing]
        raise TypeError(f"{where} missing {len(missing)} required positional arguments: "
                        f"{', '.join(quoted[:-1])} and {quoted[-1]}")

    def __getattr__(self, name: str) -> Any:
        """Reached only for a name not set on the instance: a deferred field (see `defer`), else AttributeError."""
        deferred = self.__dict__.get("__deferred__")
        if deferred is not None and name in deferred:
            value = deferred[name]()
            self.__dict__[name] = value
            del deferred[name]
            return value
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __repr__(self) -> str:
        inner = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in type(self).__record_fields__)
        return f"{type(self).__qualname__}({inner})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        names = [f.name for f in type(self).__record_fields__]
        return tuple(getattr(self, n) for n in names) == tuple(getattr(other, n) for n in names)


def _record(cls):
    """Collect the fields (bases' first, as dataclasses orders them); the methods are Record's."""
    if not (isinstance(cls, type) and issubclass(cls, Record)):
        raise TypeError(f"@record class {getattr(cls, '__name__', cls)} must derive from Record")
    by_name: Dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        for f in base.__dict__.get("__record_fields__", ()):
            by_name[f.name] = f
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():
        if isinstance(annotation, str) and annotation.startswith(("ClassVar", "typing.ClassVar", "InitVar")):
            raise TypeError(f"{cls.__name__}.{name}: ClassVar/InitVar fields are not supported by @record")
        value = cls.__dict__.get(name, MISSING)
        f = value if isinstance(value, Field) else Field(default=value)
        if isinstance(f.default, (list, dict, set)):
            raise ValueError(f"{cls.__name__}.{name}: mutable default {type(f.default).__name__}; use default_factory")
        f.name, f.type = name, annotation
        if f.default is MISSING:
            if name in cls.__dict__:
                delattr(cls, name)  # as dataclasses: a default_factory leaves no class attribute
        else:
            setattr(cls, name, f.default)
        by_name[name] = f
    seen_default = False
    for f in by_name.values():
        has_default = f.default is not MISSING or f.default_factory is not MISSING
        if seen_default and not has_default:
            raise TypeError(f"{cls.__name__}: non-default argument '{f.name}' follows default argument")
        seen_default = seen_default or has_default
    cls.__record_fields__ = tuple(by_name.values())
    cls.__match_args__ = tuple(by_name)
    return cls


def defer(obj: Record, name: str, make: Any) -> None:
    """Field `name` of `obj` becomes `make()`, worked out on its first read (then stored as any field).

    Why: the matrix cache holds sections a command may never read (known issues, launch-line rules);
    building them only when read keeps doctor's start-up to the part it uses. Every reader (getattr,
    `asdict`, `==`, repr) sees the same value as if it had been set in __init__.
    """
    if not isinstance(obj, Record) or name not in {f.name for f in type(obj).__record_fields__}:
        raise TypeError(f"defer(): {name!r} is not a field of {type(obj).__name__}")
    obj.__dict__.pop(name, None)
    obj.__dict__.setdefault("__deferred__", {})[name] = make


def _field(*, default: Any = MISSING, default_factory: Any = MISSING) -> Any:
    return Field(default, default_factory)


if TYPE_CHECKING:
    from dataclasses import dataclass as record  # noqa: F401
    from dataclasses import field  # noqa: F401
else:
    record = _record
    field = _field


def is_record(obj: Any) -> bool:
    """A record class or instance (or a real dataclass: both answer the same questions here)."""
    cls = obj if isinstance(obj, type) else type(obj)
    return "__record_fields__" in cls.__dict__ or hasattr(cls, "__dataclass_fields__")


def fields(obj: Any) -> Tuple[Any, ...]:
    """Its fields, each with .name, .type, .default, .default_factory (dataclasses.fields for a dataclass)."""
    cls = obj if isinstance(obj, type) else type(obj)
    if "__record_fields__" in cls.__dict__:
        return cls.__dict__["__record_fields__"]
    if hasattr(cls, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.fields(cls)
    raise TypeError(f"fields(): {cls.__name__} is not a record or dataclass")


def asdict(obj: Any) -> Any:
    """dataclasses.asdict for records (and dataclasses within them): nested plain dicts and lists."""
    if not is_record(obj) or isinstance(obj, type):
        raise TypeError("asdict() should be called on record instances")
    return _plain(obj)


def _plain(value: Any) -> Any:
    if type(value) in (str, int, float, bool) or value is None:
        return value
    plan = type(value).__dict__.get("__record_fields__")
    if plan is not None:
        return {f.name: _plain(getattr(value, f.name)) for f in plan}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if hasattr(type(value), "__dataclass_fields__") and not isinstance(value, type):
        import dataclasses

        return dataclasses.asdict(value)
    import copy

    return copy.deepcopy(value)


def replace(obj: Any, **changes: Any) -> Any:
    """A copy with some fields changed (dataclasses.replace)."""
    values = {f.name: getattr(obj, f.name) for f in fields(obj)}
    unknown = [k for k in changes if k not in values]
    if unknown:
        raise TypeError(f"replace(): {type(obj).__name__} has no field {unknown[0]!r}")
    values.update(changes)
    return type(obj)(**values)


_HINT_CACHE: Dict[Tuple[str, str], Any] = {}


def hints(cls: type) -> Dict[str, Any]:
    """{field: evaluated annotation}: typing.get_type_hints for a record, each distinct string evaluated once
    per module (get_type_hints re-compiles every one: ~1.5 ms for the Environment classes alone)."""
    module = sys.modules[cls.__module__]
    out: Dict[str, Any] = {}
    for f in fields(cls):
        annotation = f.type
        if isinstance(annotation, str):
            key = (cls.__module__, annotation)
            if key not in _HINT_CACHE:
                # our own classes' annotations, in their own module's namespace (never text from outside)
                _HINT_CACHE[key] = eval(annotation, vars(module))  # noqa: S307  # safe: only the annotation strings of moe-env's own record classes, in their own module; never text from a file or a probe
            annotation = _HINT_CACHE[key]
        out[f.name] = annotation
    return out
