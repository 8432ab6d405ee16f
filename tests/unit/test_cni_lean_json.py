"""The CNI plugin's JSON (lean_json.py) answers as json does: the same values, the same text,
the same errors, on generated documents and on the malformed ones json refuses."""

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyflannel.cni import lean_json

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
DOCUMENTS = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


def same(a, b) -> bool:
    """Equal, NaN included (NaN != NaN)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCUMENTS)
def test_dumps_writes_what_json_writes_and_loads_reads_it_back_as_json_does(value):
    text = lean_json.dumps(value)
    assert text == json.dumps(value)
    padded = f" \n\t{text}\r\n "
    assert same(lean_json.loads(padded.encode()), json.loads(padded.encode()))
    assert same(lean_json.loads(padded), json.loads(padded))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=40) | st.text(max_size=40).map(str.encode))
def test_any_input_gives_jsons_value_or_jsons_error(data):
    try:
        expected = json.loads(data)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        with pytest.raises(type(e)) as got:
            lean_json.loads(data)
        assert str(got.value) == str(e)
    else:
        assert same(lean_json.loads(data), expected)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"  ",
        b"{",
        b'{"a": 1} x',
        b"[1,]",
        b"\xef\xbb\xbf{}",
        b"NaN",
        b"-Infinity",
        '{"a": "\u00e9"}'.encode("utf-16"),
        b'"\\ud800"',
        b"1e999",
        b'{"a":1,"a":2}',
    ],
)
def test_edge_documents(data):
    try:
        expected = json.loads(data)
    except ValueError as e:
        with pytest.raises(type(e)) as got:
            lean_json.loads(data)
        assert str(got.value) == str(e)
    else:
        assert same(lean_json.loads(data), expected)


def test_what_json_cannot_write_is_refused_as_json_refuses_it():
    for value in ({1j: 2}, [object()], {(1, 2): 3}):
        with pytest.raises(TypeError) as e:
            json.dumps(value)
        with pytest.raises(TypeError) as got:
            lean_json.dumps(value)
        assert str(got.value) == str(e.value)
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference"):
        lean_json.dumps(loop)
    assert lean_json.dumps([1, 2]) == "[1, 2]"  # a refused value leaves nothing behind


def test_an_accelerator_with_another_signature_falls_back_to_json(monkeypatch):
    """A later CPython may change _json's private make_encoder/make_scanner: every ADD must
    still write and read its JSON (through json itself)."""

    def changed(*args, **kwargs):
        raise TypeError("make_encoder() takes exactly 10 arguments (9 given)")

    monkeypatch.setattr(lean_json._json, "make_encoder", changed)
    monkeypatch.setattr(lean_json, "_scan", changed)
    document = {"cniVersion": "1.0.0", "ips": [{"address": "10.1.5.2/24"}]}
    assert lean_json.dumps(document) == json.dumps(document)
    assert lean_json.loads(json.dumps(document)) == document
    with pytest.raises(TypeError, match="is not JSON serializable"):
        lean_json.dumps([object()])
