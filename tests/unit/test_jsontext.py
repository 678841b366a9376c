"""The hot-path JSON helpers read and write what the standard library did."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

from agents import jsontext


def test_reads_what_the_standard_library_writes_including_nan_and_infinity() -> None:
    text = json.dumps({"a": [1, 2.5, "é"], "nan": math.nan, "inf": math.inf})
    value = jsontext.loads(text)
    assert value["a"] == [1, 2.5, "é"]
    assert math.isnan(value["nan"]) and value["inf"] == math.inf
    assert jsontext.loads(b'{"k": null}') == {"k": None}


def test_writes_compact_text_the_standard_library_reads_back() -> None:
    when = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    text = jsontext.dumps({"n": 1, 2: "two", "when": when, "obj": object})
    assert " " not in text.replace("<class 'object'>", "")
    back = json.loads(text)
    assert back["n"] == 1 and back["2"] == "two"
    assert back["when"].startswith("2026-12-01T10:00:00")
    assert back["obj"] == str(object)


def test_integers_beyond_64_bits_fall_back_to_the_standard_library() -> None:
    assert json.loads(jsontext.dumps({"big": 2**70})) == {"big": 2**70}


def test_sorted_keys_give_one_text_for_one_value_on_both_paths() -> None:
    one, other = {"b": 1, "a": {"d": 2, "c": 3}}, {"a": {"c": 3, "d": 2}, "b": 1}
    assert jsontext.dumps(one, sort_keys=True) == jsontext.dumps(other, sort_keys=True)
    assert jsontext.dumps(one, sort_keys=True) == '{"a":{"c":3,"d":2},"b":1}'
    big = jsontext.dumps({"z": 2**70, "a": 1}, sort_keys=True)  # the standard library's path
    assert big == '{"a":1,"z":1180591620717411303424}'


def test_nan_and_infinity_are_written_as_null() -> None:
    """JSON has no NaN: orjson writes null where the standard library wrote invalid JSON."""
    assert json.loads(jsontext.dumps({"nan": math.nan, "inf": -math.inf})) == {
        "nan": None,
        "inf": None,
    }
