"""Hypothesis strategies for request bodies, made from the wire records themselves.

`valid(T)` walks a msgspec Struct's type annotations (and the constraints `msgspec.Meta` puts on
them, when the records carry some) and builds JSON values of the right shape, with the values a
server must cope with: 0, -1, 2^31, 2^32, 2^63-1, 2^63, 2^64, huge numbers, empty and long
strings, unicode, NUL bytes. `mutated(T)` then breaks them: a field of the wrong type, a
required field missing, an unknown field, a huge list, a number out of any range. `raw_body()`
breaks the encoding: not JSON, truncated JSON, bad base64.

Values come out as JSON-ready Python (bytes as base64 text, as msgspec sends them), so one
`json.dumps` makes the body.
"""

from __future__ import annotations

import base64
import json
import types
import typing
from typing import Any

import msgspec
from hypothesis import strategies as st

BOUNDARY_INTS = [0, 1, -1, 2, 255, 256, 4095, 4096, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53, 2**63 - 1,
                 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, -(2**64), 10**30, -(10**30), 0o170000,
                 0o100644, 0o40755, 0o120777, 0o4777, 4 * 2**20, 64 * 2**10]
BOUNDARY_FLOATS = [0.0, -0.0, -1.0, 0.001, 1e9, 1e308, -1e308, 2.0**63, 2.0**64]
WEIRD_TEXT = ["", ".", "..", "/", "a/b", "\x00", "a\x00b", "\u00e9", "\u202e", "\ud7ff", "\U0001f600",
              "x" * 256, "x" * 4096, "%0A", "\n", "\r\nX-Forged: 1", " ", "\ufffd"]
HUGE_LIST_ITEMS = 20_000

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                         st.text(max_size=20))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _ints(meta: msgspec.Meta | None) -> st.SearchStrategy[int]:
    near: list[int] = []
    if meta is not None:
        for bound in (meta.ge, meta.le, meta.gt, meta.lt):
            if isinstance(bound, int):
                near += [bound - 1, bound, bound + 1]
    return st.one_of(st.sampled_from(BOUNDARY_INTS + near), st.integers(-(2**70), 2**70),
                     st.integers(0, 1000))


def _bytes_text() -> st.SearchStrategy[str]:
    names = st.one_of(st.binary(max_size=40), st.sampled_from([t.encode("utf-8", "surrogatepass")
                                                               for t in WEIRD_TEXT]),
                      st.builds(lambda n: b"n" * n, st.sampled_from([255, 256, 4095, 4096, 70_000])))
    return names.map(b64)


def _text() -> st.SearchStrategy[str]:
    return st.one_of(st.text(max_size=40), st.sampled_from([t for t in WEIRD_TEXT if t != "\ud7ff"]),
                     st.from_regex(r"[a-z0-9-]{1,16}", fullmatch=True))


def _unwrap(tp: Any) -> tuple[Any, msgspec.Meta | None]:
    """(the type, its msgspec constraints) of an `Annotated[...]` or plain type."""
    if typing.get_origin(tp) is typing.Annotated:
        base, *extras = typing.get_args(tp)
        meta = next((e for e in extras if isinstance(e, msgspec.Meta)), None)
        return _unwrap(base)[0], meta
    return tp, None


def valid(tp: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """JSON values of type `tp` (right shape, values anywhere in or just out of range)."""
    tp, meta = _unwrap(tp)
    origin = typing.get_origin(tp)
    if tp is Any or depth > 4:
        return json_scalars
    if tp is type(None):
        return st.none()
    if tp is bool:
        return st.booleans()
    if tp is int:
        return _ints(meta)
    if tp is float:
        return st.one_of(st.sampled_from(BOUNDARY_FLOATS), st.floats(-1e6, 1e6))
    if tp is str:
        return _text()
    if tp is bytes:
        return _bytes_text()
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(valid(arg, depth + 1) for arg in typing.get_args(tp)))
    if origin is list:
        (item,) = typing.get_args(tp)
        return st.lists(valid(item, depth + 1), max_size=5)
    if origin is tuple:
        return st.tuples(*(valid(arg, depth + 1) for arg in typing.get_args(tp))).map(list)
    if origin is dict:
        _key, value = typing.get_args(tp)
        return st.dictionaries(_text(), valid(value, depth + 1), max_size=3)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return _struct(tp, depth)
    return json_scalars


def _struct(tp: type[msgspec.Struct], depth: int) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(tp, include_extras=True)
    fields = msgspec.structs.fields(tp)
    required = {f.encode_name: valid(hints[f.name], depth + 1) for f in fields if f.required}
    optional = {f.encode_name: valid(hints[f.name], depth + 1) for f in fields if not f.required}
    as_dict = st.fixed_dictionaries(required, optional=optional)
    if tp.__struct_config__.array_like:  # sent as a JSON array, in field order
        order = [f.encode_name for f in fields]
        return st.fixed_dictionaries({**required, **optional}).map(lambda d: [d[k] for k in order])
    return as_dict


def mutated(tp: Any, data: st.DataObject) -> Any:
    """A body of type `tp`, then broken in one of the ways a careless or hostile client would."""
    body = data.draw(valid(tp), label="body")
    mutation = data.draw(st.sampled_from(MUTATIONS), label="mutation")
    return mutation(body, data)


def _pick_key(body: Any, data: st.DataObject) -> str | int | None:
    if isinstance(body, dict) and body:
        return data.draw(st.sampled_from(sorted(body)))
    if isinstance(body, list) and body:
        return data.draw(st.integers(0, len(body) - 1))
    return None


def _wrong_type(body: Any, data: st.DataObject) -> Any:
    key = _pick_key(body, data)
    if key is None:
        return data.draw(json_scalars)
    body[key] = data.draw(st.one_of(json_scalars, st.just([]), st.just({}), st.just([[1, 2]])))
    return body


def _missing_field(body: Any, data: st.DataObject) -> Any:
    key = _pick_key(body, data)
    if key is not None:
        del body[key]
    return body


def _unknown_field(body: Any, data: st.DataObject) -> Any:
    if isinstance(body, dict):
        body[data.draw(_text())] = data.draw(json_scalars)
    elif isinstance(body, list):
        body.append(data.draw(json_scalars))
    return body


def _out_of_range(body: Any, data: st.DataObject) -> Any:
    key = _pick_key(body, data)
    if key is not None:
        body[key] = data.draw(st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**400, -1, -1.5, float("inf"), float("nan")]))
    return body


def _huge_list(body: Any, data: st.DataObject) -> Any:
    key = _pick_key(body, data)
    item = data.draw(st.sampled_from([0, 2**63 - 1, [1, 1], "", b64(b"x")]))
    huge = [item] * data.draw(st.sampled_from([1000, HUGE_LIST_ITEMS]))
    if key is None:
        return huge
    body[key] = huge
    return body


def _deep(body: Any, data: st.DataObject) -> Any:
    nested: Any = 1
    for _ in range(data.draw(st.sampled_from([50, 400]))):
        nested = [nested]
    return {"x": nested} if not isinstance(body, dict) else {**body, "x": nested}


def _bad_base64(body: Any, data: st.DataObject) -> Any:
    key = _pick_key(body, data)
    if key is not None:
        body[key] = data.draw(st.sampled_from(["@@@", "YQ", "====", "\x00", "\u00e9"]))
    return body


MUTATIONS = [_wrong_type, _missing_field, _unknown_field, _out_of_range, _huge_list, _deep, _bad_base64]


def raw_body() -> st.SearchStrategy[bytes]:
    """Bodies that are not JSON of any record."""
    return st.one_of(
        st.just(b""), st.just(b"{"), st.just(b"null"), st.just(b"[]"), st.just(b"\xff\xfe\x00"),
        st.binary(max_size=200), st.just(b'{"ino": 1' + b" " * 10), st.just(b"1" * 5000),
        st.just(json.dumps({"ino": 10**400}).encode()),
    )
