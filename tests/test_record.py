"""moe_env.record behaves as @dataclass does, for every call shape: a record class and a real dataclass with the
same fields are built from the same arguments and must agree (values, repr, equality, or the TypeError)."""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_env.environment import Environment
from moe_env.matrix.model import Matrix
from moe_env import record as records
from moe_env.record import Record, field, record


@record
class Rec(Record):
    name: str
    count: int = 0
    tags: List[str] = field(default_factory=list)
    extra: Optional[Dict[str, int]] = None


@dataclasses.dataclass
class Ref:
    name: str
    count: int = 0
    tags: List[str] = dataclasses.field(default_factory=list)
    extra: Optional[Dict[str, int]] = None


def _outcome(cls, args, kwargs):
    try:
        obj = cls(*args, **kwargs)
    except TypeError as exc:
        return "TypeError", str(exc).split(".", 1)[1]  # the class name before the first dot differs
    as_dict = records.asdict(obj) if cls is Rec else dataclasses.asdict(obj)
    return as_dict, repr(obj).split("(", 1)[1]


values = st.one_of(st.integers(), st.text(max_size=3), st.none(), st.lists(st.text(max_size=2), max_size=2))
names = st.sampled_from(["name", "count", "tags", "extra", "other"])


@settings(max_examples=300, deadline=None)
@given(args=st.lists(values, max_size=5), kwargs=st.dictionaries(names, values, max_size=4))
def test_record_matches_dataclass_on_any_arguments(args, kwargs):
    assert _outcome(Rec, args, kwargs) == _outcome(Ref, args, kwargs)


def test_errors_name_the_argument():
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'name'"):
        Rec()
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        Rec("a", colour=1)
    with pytest.raises(TypeError, match="multiple values for argument 'name'"):
        Rec("a", name="b")
    with pytest.raises(TypeError, match="positional arguments"):
        Rec("a", 1, [], None, 5)


def test_equality_hash_and_the_dataclass_api():
    a, b = Rec("x", tags=["t"]), Rec("x", tags=["t"])
    assert a == b and a != Rec("y") and a != Ref("x", tags=["t"])
    assert Rec("x").tags is not Rec("x").tags  # default_factory per instance
    with pytest.raises(TypeError):
        hash(a)  # unhashable, as @dataclass(eq=True) makes it
    assert records.is_record(Rec) and [f.name for f in records.fields(Rec)] == ["name", "count", "tags", "extra"]
    assert records.replace(a, count=3) == Rec("x", 3, ["t"])
    with pytest.raises(TypeError, match="no field 'colour'"):
        records.replace(a, colour=1)
    assert records.hints(Rec) == {"name": str, "count": int, "tags": List[str], "extra": Optional[Dict[str, int]]}
    assert Rec.__match_args__ == ("name", "count", "tags", "extra")
    assert repr(a) == "Rec(name='x', count=0, tags=['t'], extra=None)"


def test_declaration_errors_are_those_of_dataclasses():
    with pytest.raises(TypeError, match="must derive from Record"):
        @record
        class Plain:
            x: int = 0
    with pytest.raises(ValueError, match="mutable default"):
        @record
        class Mutable(Record):
            x: List[int] = []  # noqa: RUF012
    with pytest.raises(TypeError, match="non-default argument 'y' follows default argument"):
        @record
        class Order(Record):
            x: int = 0
            y: int


def test_a_record_without_fields_is_still_a_record():
    @record
    class Empty(Record):
        pass

    assert records.is_record(Empty) and records.fields(Empty) == () and records.asdict(Empty()) == {}
    assert Empty() == Empty() and repr(Empty()).endswith("Empty()")


def test_a_record_in_a_real_dataclass_and_back():
    @dataclasses.dataclass
    class Holder:
        inner: List[Rec]

    @record
    class Outer(Record):
        held: Holder
        recs: Dict[str, Rec] = field(default_factory=dict)

    out = Outer(Holder([Rec("a")]), {"k": Rec("b", 2)})
    assert records.asdict(out)["recs"] == {"k": {"name": "b", "count": 2, "tags": [], "extra": None}}
    assert records.asdict(out)["held"]["inner"][0] == Rec("a")  # dataclasses.asdict leaves a non-dataclass as is


@pytest.mark.parametrize("cls", [Environment, Matrix])
def test_the_hot_path_types_are_records(cls):
    """doctor's own types use it (the point of the module: see benchmarks/doctor_bench.py)."""
    assert issubclass(cls, Record) and cls.__record_fields__


def test_a_deferred_field_is_made_once_on_first_read_and_reads_as_a_set_one():
    calls = []

    def make():
        calls.append(1)
        return ["a", "b"]

    lazy = Rec("x", 2)
    records.defer(lazy, "tags", make)
    assert calls == []
    assert lazy.count == 2 and calls == []  # other fields do not force it
    assert lazy.tags == ["a", "b"] and lazy.tags is lazy.tags and calls == [1]
    assert lazy == Rec("x", 2, ["a", "b"]) and repr(lazy) == repr(Rec("x", 2, ["a", "b"]))
    other = Rec("y")
    records.defer(other, "tags", lambda: ["z"])
    assert records.asdict(other) == {"name": "y", "count": 0, "tags": ["z"], "extra": None}
    with pytest.raises(TypeError, match="'nope' is not a field of Rec"):
        records.defer(other, "nope", list)
    with pytest.raises(AttributeError, match="'Rec' object has no attribute 'missing'"):
        other.missing  # noqa: B018
    assert not hasattr(other, "missing")
