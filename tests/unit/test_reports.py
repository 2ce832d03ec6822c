"""The bytes workers and spares exchange with the master over pipes
(encode_report / decode_reports / encode_slot in unicornish/protocol.py)."""

from __future__ import annotations

import struct
import sys

from unicornish.protocol import (
    REPORT_READY,
    REPORT_SIZE,
    decode_reports,
    encode_report,
    encode_slot,
)


def test_a_report_is_two_native_ints():
    data = encode_report(4242, REPORT_READY)
    assert REPORT_SIZE == 8 == len(data)
    assert data == struct.pack("=ii", 4242, REPORT_READY)


def test_reports_decode_in_order():
    data = encode_report(10, REPORT_READY) + encode_report(11, 7) + encode_report(2**31 - 1, 0)
    assert decode_reports(data) == [(10, REPORT_READY), (11, 7), (2**31 - 1, 0)]


def test_nothing_decodes_to_nothing():
    assert decode_reports(b"") == []


def test_a_torn_report_at_the_end_is_left_out():
    whole = encode_report(10, REPORT_READY) + encode_report(11, REPORT_READY)
    for cut in range(1, REPORT_SIZE):
        assert decode_reports(whole[: REPORT_SIZE + cut]) == [(10, REPORT_READY)]
    assert decode_reports(whole[: REPORT_SIZE - 1]) == []


def test_a_slot_is_one_native_int():
    for nr in (0, 1, 63, 2**31 - 1):
        data = encode_slot(nr)
        assert len(data) == 4
        assert int.from_bytes(data, sys.byteorder, signed=True) == nr
