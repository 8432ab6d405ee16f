"""JSON for the CNI plugin without importing ``json``: the plugin starts once per container,
and ``import json`` costs ~7 ms there (it imports ``re`` and ``enum``) of a ~9 ms floor
(bench/README, "CNI plugin"). The parsing and printing are json's own all the same: CPython's
``_json`` accelerator, which json itself calls, set up as ``json.loads``/``json.dumps`` set it
up with their defaults. Anything the accelerator does not take as a whole document (malformed
input, a BOM, another encoding) goes to ``json.loads`` itself, which then answers or raises
exactly as it always does; so does everything on a Python without ``_json``, and every
value the accelerator does not print (json.dumps then prints it or raises its own error, also
if a later CPython changed the accelerator's private signature).
tests/unit/test_cni_lean_json.py proves the answers are json's."""

from __future__ import annotations

TYPE_CHECKING = False  # not even ``typing`` at run time (mypy takes any TYPE_CHECKING as true)
if TYPE_CHECKING:
    from typing import Any

try:
    import _json
except ImportError:  # not CPython: json's pure-Python path
    _json = None  # type: ignore[assignment]

_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}
_WHITESPACE = " \t\n\r"  # JSON's, around a document


class _Decoding:
    """The attributes ``_json.make_scanner`` reads: those of a default ``json.JSONDecoder``."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__


def _not_serializable(o: object) -> object:
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


if _json is not None:
    _scan = _json.make_scanner(_Decoding())  # type: ignore[arg-type]  # (typeshed: a decoder)


def loads(data: bytes | str) -> Any:
    """``json.loads(data)``."""
    if _json is not None:
        try:
            text = data.decode() if isinstance(data, bytes) else data
            document = text.strip(_WHITESPACE)
            value, end = _scan(document, 0)
            if end == len(document):
                return value
        except Exception:  # json.loads, below, says what is wrong
            pass
    import json

    return json.loads(data)


def dumps(value: Any) -> str:
    """``json.dumps(value)``."""
    if _json is not None:
        try:
            # json.dumps's defaults: circular check (fresh markers each call), ASCII output,
            # ", " and ": ", keys unsorted and kept only if strings, NaN allowed
            encode = _json.make_encoder(
                {}, _not_serializable, _json.encode_basestring_ascii, None, ": ", ", ",
                False, False, True,
            )  # fmt: skip
            return "".join(encode(value, 0))
        except Exception:  # json.dumps, below, answers or says what is wrong
            pass
    import json

    return json.dumps(value)
