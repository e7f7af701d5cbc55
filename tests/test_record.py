"""The record base (:mod:`mech.contract.record`): a JSON file as a typed, frozen object.

The oracle is the JSON text itself: ``json.dumps`` of the record's ``to_json`` must equal ``json.dumps``
of the content it was read from (keys in the same order at every depth, ints kept ints), and the typed
view must give the values a plain ``json.loads`` gives.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import FrozenInstanceError, dataclass
from typing import Any

import pytest

from mech.contract.record import Record, freeze, thaw
from mech.errors import InputError, MechError


@dataclass(frozen=True)
class Point(Record):
    delta: float | None
    ci95: tuple[float | None, ...]


@dataclass(frozen=True)
class Demo(Record):
    COMMAND = "demo"

    n: int
    name: str
    flags: tuple[bool, ...]
    overall: Mapping[str, Point]
    curves: Mapping[str, tuple[float | None, ...]]
    anything: Any
    nested: Point | None = None
    note: str | None = None


CONTENT = {
    "name": "x",  # not in declaration order: the file's order is kept
    "n": 3,
    "flags": [True, False],
    "overall": {
        "dla": {"delta": 2, "ci95": [1.5, None], "dominant": "text"},
        "attention": {"delta": None, "ci95": []},
    },
    "curves": {"text": [0.25, None, 1e-300]},
    "anything": {"a": [1, {"b": None}], "c": "d"},
    "nested": None,
    "written_by_a_newer_mech": {"k": [1, 2]},
}


def test_round_trip_keeps_keys_order_and_ints():
    rec = Demo.from_json(CONTENT)
    assert json.dumps(rec.to_json()) == json.dumps(CONTENT)
    assert rec.overall["dla"].delta == 2 and isinstance(rec.overall["dla"].delta, int)
    assert rec.overall["dla"].extra == {"dominant": "text"}  # nested keys it does not declare are kept too
    assert rec.extra["written_by_a_newer_mech"]["k"] == (1, 2)  # so is a key the class lacks
    assert rec.note is None and "note" not in rec.to_json()  # absent stays absent
    assert rec.nested is None and rec.to_json()["nested"] is None  # null stays null
    assert rec.curves["text"] == (0.25, None, 1e-300)


def test_values_are_frozen():
    rec = Demo.from_json(CONTENT)
    with pytest.raises(FrozenInstanceError):
        rec.n = 4
    with pytest.raises(TypeError):
        rec.overall["new"] = rec.overall["dla"]
    with pytest.raises(TypeError):
        rec.anything["a"] = 1
    assert isinstance(rec.anything["a"], tuple) and rec.anything["a"][1]["b"] is None
    assert thaw(freeze(CONTENT)) == CONTENT


def test_equality_and_a_record_made_in_python():
    a, b = Demo.from_json(CONTENT), Demo.from_json(json.loads(json.dumps(CONTENT)))
    assert a == b
    made = Demo(n=3, name="x", flags=(True,), overall={}, curves={}, anything=None)
    assert list(made.to_json()) == ["n", "name", "flags", "overall", "curves", "anything", "nested", "note"]
    assert Demo.from_json(made.to_json()) == made


@pytest.mark.parametrize(
    "change, where",
    [
        ({"n": "3"}, "n: expected int"),
        ({"n": True}, "n: expected int"),
        ({"flags": [1]}, "flags[0]: expected bool"),
        ({"overall": {"dla": {"delta": "big", "ci95": []}}}, "overall.dla: delta"),
        ({"curves": {"text": "0.1"}}, "curves.text: expected a list"),
        ({"overall": []}, "overall: expected an object"),
    ],
)
def test_a_value_of_the_wrong_kind_names_its_key(change, where):
    with pytest.raises(InputError, match=where.replace("[", r"\[").replace("]", r"\]")) as e:
        Demo.from_json({**CONTENT, **change})
    assert isinstance(e.value, MechError) and "demo.json" in str(e.value)


def test_a_missing_required_key_names_it_and_the_fix():
    content = {k: v for k, v in CONTENT.items() if k != "curves"}
    with pytest.raises(InputError, match="has no 'curves'.*rerun the command"):
        Demo.from_json(content)


def test_read_a_folder_or_a_file(tmp_path):
    (tmp_path / "demo.json").write_text(json.dumps(CONTENT, indent=2))
    assert Demo.read(tmp_path) == Demo.read(tmp_path / "demo.json") == Demo.from_json(CONTENT)
    with pytest.raises(InputError, match="run mech demo"):
        Demo.read(tmp_path / "missing")
    (tmp_path / "bad" / "demo.json").parent.mkdir()
    (tmp_path / "bad" / "demo.json").write_text("{not json")
    with pytest.raises(InputError, match="is not JSON"):
        Demo.read(tmp_path / "bad")


def test_read_record_picks_the_commands_record_by_file_name(tmp_path):
    """``mech.read_record`` on a ``contrib.json`` made in Python gives a ``ContribRecord`` whose values are
    the file's (the record is made by the instrument registered for ``contrib``)."""
    import torch

    import mech
    from mech.curves import ContribRecord, Contributions

    g = torch.Generator().manual_seed(0)
    per = {"dla": torch.randn(6, 2, len(mech.GROUPS), generator=g, dtype=torch.float64)}
    content = Contributions(per).to_json(n_boot=20)
    (tmp_path / "contrib.json").write_text(json.dumps(content))
    rec = mech.read_record(tmp_path / "contrib.json")
    assert isinstance(rec, ContribRecord) and rec.to_json() == json.loads(json.dumps(content))
    assert rec.overall["dla"].delta == content["overall"]["dla"]["delta"]
    (tmp_path / "notes.json").write_text("{}")
    with pytest.raises(InputError, match="eval.json"):
        mech.read_record(tmp_path / "notes.json")
    with pytest.raises(InputError, match="is a folder"):
        mech.read_record(tmp_path)
