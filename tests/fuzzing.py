"""Hypothesis strategies for hostile payloads, shared by the fuzz tests of every consumer: the
bridge's uplink (``tests/bridge/test_bridge_fuzz.py``), the cloud workers' Kafka inputs
(``tests/cloud/test_worker_fuzz.py``) and the agent's downlink (``tests/edge/test_link_fuzz.py``)."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
"""Any JSON value, nested a little."""

big_numbers = st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**400, 1e308, -0.0, 4e9, 1e-320])
"""Numbers at and past what a signed 64-bit column, a double or a parser holds."""

HOSTILE = (b"[" * 5000, b'{"a":' * 3000, b"\\ud800", b"\xff\xfe", b"NaN", b"Infinity", b"-Infinity", b"}")
"""Byte strings that break parsers: deep nesting, a lone surrogate, invalid UTF-8, non-JSON numbers."""


@st.composite
def mutated(draw: st.DrawFn, raw: bytes, pieces: Sequence[bytes] = ()) -> bytes:
    """``raw`` with one to four random edits: a byte changed, a run cut, or a hostile piece (of
    :data:`HOSTILE` and ``pieces``, e.g. a duplicate key of the message) inserted."""
    out = bytearray(raw)
    for _ in range(draw(st.integers(1, 4))):
        if not out:
            break
        at = draw(st.integers(0, len(out) - 1))
        how = draw(st.sampled_from(["flip", "cut", "insert"]))
        if how == "flip":
            out[at] = draw(st.integers(0, 255))
        elif how == "cut":
            del out[at : at + draw(st.integers(1, 64))]
        else:
            out[at:at] = draw(st.sampled_from([*HOSTILE, *pieces]))
    return bytes(out)
