"""The two codec twins: same stored bytes, equal decoded objects, same id chunks."""

import datetime
import decimal
import importlib
import math
import uuid
from types import ModuleType
from typing import Any, Dict, List

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyv_edge_agent.cloud_sync import BACKEND, Priority, QueueItem
from pyv_edge_agent.cloud_sync._codec._env import no_extensions

PURE = importlib.import_module("pyv_edge_agent.cloud_sync._codec._py")


def _twins() -> List[ModuleType]:
    twins = [PURE]
    if not no_extensions():
        twins.append(importlib.import_module("pyv_edge_agent.cloud_sync._codec._c"))
    return twins


AWKWARD: List[Dict[Any, Any]] = [
    {},
    {"when": datetime.datetime(2026, 11, 26, 12, 30, 5, 123456), "day": datetime.date(2026, 1, 2)},
    {"aware": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)},
    {"money": decimal.Decimal("12.3400"), "id": uuid.UUID(int=7)},
    {"big": 1.7976931348623157e308, "tiny": 5e-324, "neg0": -0.0, "i": -(2**63), "u": 2**64 - 1},
    {"nan": math.nan, "inf": math.inf, "ninf": -math.inf},
    {"uni": "日本語 ☃ 𝄞 é", "ctl": "\x00\x01\x1f\x7f\u2028\u2029", "quote": '"\\/'},
    {"empties": [[], {}, "", [{}]], "none": None, "bools": [True, False]},
    {1: "int key", 2.5: "float key", None: "none key", False: "bool key"},
    {"set_like": frozenset([1]), "bytes": b"raw", "obj": ValueError("x")},
    {"priority": Priority.CRITICAL},
]


@pytest.mark.parametrize("index", range(len(AWKWARD)))
def test_stored_text_is_byte_identical_across_twins(index: int) -> None:
    payload = AWKWARD[index]
    texts = {twin.__name__: twin.encode_payload(payload) for twin in _twins()}
    assert len(set(texts.values())) == 1, texts
    text = next(iter(texts.values()))
    assert isinstance(text, str) and ", " not in text.replace('", "', "")  # compact
    rows = [twin.encode_rows([payload, payload], 2, 1.5, 60) for twin in _twins()]
    assert all(r == rows[0] for r in rows) and rows[0][0] == (text, 2, 1.5, 60)


def test_nan_and_infinity_are_stored_as_null(codec: ModuleType) -> None:
    assert codec.encode_payload({"a": math.nan, "b": math.inf}) == '{"a":null,"b":null}'


def test_unknown_types_go_through_str(codec: ModuleType) -> None:
    class Reading:
        def __str__(self) -> str:
            return "reading-42"

    assert codec.encode_payload({"r": Reading()}) == '{"r":"reading-42"}'


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)
payloads = st.dictionaries(st.text(max_size=10), json_values, max_size=8)


@settings(max_examples=150, deadline=None)
@given(payloads)
def test_encoded_by_one_twin_decodes_equal_in_the_other(payload: Dict[str, Any]) -> None:
    twins = _twins()
    for writer in twins:
        text = writer.encode_payload(payload)
        for reader in twins:
            decoded = reader.decode_payload(text)
            assert decoded == orjson.loads(orjson.dumps(payload))
            assert reader.decode_payload(text.encode()) == decoded


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 2**40),
            payloads,
            st.integers(1, 4),
            st.floats(0, 2e9),
            st.integers(0, 2**31),
            st.integers(0, 100),
            st.floats(0, 2e9),
        ),
        max_size=20,
    )
)
def test_decode_rows_gives_equal_items_in_both_twins(rows: List[Any]) -> None:
    stored = [(r[0], PURE.encode_payload(r[1]), *r[2:]) for r in rows]
    results = [twin.decode_rows(stored) for twin in _twins()]
    assert all(result == results[0] for result in results)
    for item, row in zip(results[0], rows):
        assert type(item) is QueueItem
        assert item.priority is Priority(row[2])
        assert (item.id, item.created_at, item.ttl_seconds, item.retry_count, item.next_retry_at) == (
            row[0],
            row[3],
            row[4],
            row[5],
            row[6],
        )


def test_decode_rows_rejects_unknown_priority(codec: ModuleType) -> None:
    for bad in (0, -1, 5):
        with pytest.raises(ValueError):
            codec.decode_rows([(1, "{}", bad, 0.0, 1, 0, 0.0)])


def test_splice_body_is_a_json_array_of_the_stored_texts(codec: ModuleType) -> None:
    texts = [codec.encode_payload(p).encode() for p in AWKWARD[:8]]
    body = codec.splice_body(texts)
    assert orjson.loads(body) == [orjson.loads(t) for t in texts]
    assert codec.splice_body([]) == b"[]"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=1500))
def test_id_chunks_agree_and_cover_every_id_once(ids: List[int]) -> None:
    results = [twin.id_chunks(ids) for twin in _twins()]
    assert all(result == results[0] for result in results)
    chunks = results[0]
    assert all(len(chunk) in PURE.ID_CHUNK_SHAPES for chunk in chunks)
    flat = [i for chunk in chunks for i in dict.fromkeys(chunk)]
    assert flat == list(dict.fromkeys(ids))


def test_id_chunks_accept_index_types(codec: ModuleType) -> None:
    class Id:
        def __index__(self) -> int:
            return 9

    assert codec.id_chunks((x for x in [Id(), 3])) == [(9, 3)]


# The tests below call both twins themselves: one run is enough (see ../../conftest.py).
BOTH_TWINS_AT_ONCE = pytest.mark.parametrize("backend", [BACKEND], indirect=True)


def _outcome(function: Any, *args: Any) -> Any:
    """What a call gives: its result, or the type and message of what it raised."""
    try:
        return ("returned", function(*args))
    except Exception as exc:  # the point is to compare whatever is raised
        return ("raised", type(exc), str(exc))


def _alike(one: Any, other: Any) -> bool:
    # Since Python 3.13 a dataclass compares field by field, without the identity shortcut of
    # a tuple, so an item whose payload is NaN is unequal even to itself: its repr still
    # says whether two outcomes are the same.
    return bool(one == other) or repr(one) == repr(other)


def _same_in_both_twins(name: str, *args: Any) -> Any:
    outcomes = [_outcome(getattr(twin, name), *args) for twin in _twins()]
    assert all(_alike(outcome, outcomes[0]) for outcome in outcomes), outcomes
    return outcomes[0]


GOOD_ROW = (1, '{"a":1}', 3, 1.5, 60, 0, 0.0)
BAD_ROWS = {
    "a list, not a tuple": ([1, '{"a":1}', 3, 1.5, 60, 0, 0.0], TypeError),
    "priority 2**64": ((1, "{}", 2**64, 1.5, 60, 0, 0.0), ValueError),
    "six columns": (GOOD_ROW[:6], ValueError),
    "eight columns": (GOOD_ROW + (0,), ValueError),
    "no row at all": (None, TypeError),
    "priority as text": ((1, "{}", "3", 1.5, 60, 0, 0.0), ValueError),
    "priority -2**63": ((1, "{}", -(2**63), 1.5, 60, 0, 0.0), ValueError),
    "payload not JSON": ((1, "{nope", 3, 1.5, 60, 0, 0.0), ValueError),
}


@BOTH_TWINS_AT_ONCE
@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_rows_raise_the_same_error_in_both_twins(case: str) -> None:
    row, error = BAD_ROWS[case]
    outcome = _same_in_both_twins("decode_rows", [GOOD_ROW, row])
    assert outcome[0] == "raised" and issubclass(outcome[1], error), outcome
    if case != "payload not JSON" and "priority" not in case:
        assert "rows[1]" in outcome[2]  # names the row


EDGE_ROWS = [
    [],
    [GOOD_ROW],
    [(2**63 - 1, "[]", 1, -0.0, 0, 2**62, math.inf)],
    [(-1, '"text"', 4, 1e300, 2**63 - 1, 0, -1.0)],
    [(1, b'{"bytes":true}', 2, 0, 0, 0, 0)],
    [(1, "NaN", True, 0.0, 0, 0, 0.0)],  # True == 1: the CRITICAL member, as Priority(True) gives
    [(1, "{}", 3.0, 0.0, 0, 0, 0.0)],
]


@BOTH_TWINS_AT_ONCE
@pytest.mark.parametrize("index", range(len(EDGE_ROWS)))
def test_edge_rows_decode_alike(index: int) -> None:
    assert _same_in_both_twins("decode_rows", EDGE_ROWS[index])[0] == "returned"


EDGE_IDS: List[Any] = [
    [],
    [0],
    [2**63 - 1, -(2**63)],
    [2**63],
    [-(2**63) - 1],
    [True],
    [1.0],
    ["1"],
    [None],
    "123",
    b"12",
    {1: 2},
    None,
    7,
    list(range(513)),
    [5] * 1000,
    (i for i in (3, 1, 3)),
]


@BOTH_TWINS_AT_ONCE
@pytest.mark.parametrize("index", range(len(EDGE_IDS)))
def test_edge_id_lists_chunk_or_fail_alike(index: int) -> None:
    ids = EDGE_IDS[index]
    if not isinstance(ids, (list, str, bytes, dict, type(None), int)):
        ids = list(ids)  # a generator is used up by the first twin: give each the same items
    _same_in_both_twins("id_chunks", ids)


EDGE_PAYLOADS: List[Any] = [
    [],
    [{}],
    [{"a": 1}, {"b": [1, 2]}],
    [{"a": 1}, ["not", "a", "dict"]],
    [{"bad": "\ud800"}],
    {"a": 1},
    "text",
    b"bytes",
    [None],
]


@BOTH_TWINS_AT_ONCE
@pytest.mark.parametrize("index", range(len(EDGE_PAYLOADS)))
def test_edge_payloads_encode_or_fail_alike(index: int) -> None:
    payloads = EDGE_PAYLOADS[index]
    _same_in_both_twins("encode_rows", payloads, 2, 1.5, 60)
    for payload in payloads if isinstance(payloads, list) else [payloads]:
        _same_in_both_twins("encode_payload", payload)
