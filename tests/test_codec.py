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

from pyv_edge_agent.cloud_sync import Priority, QueueItem
from pyv_edge_agent.cloud_sync._env import no_extensions

PURE = importlib.import_module("pyv_edge_agent.cloud_sync._codec_py")


def _twins() -> List[ModuleType]:
    twins = [PURE]
    if not no_extensions():
        twins.append(importlib.import_module("pyv_edge_agent.cloud_sync._codec_c"))
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
