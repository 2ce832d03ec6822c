"""Under `make soak` only: run every bad-input case once more and write the
table of what each gives into docs/RELIABILITY.md (the same cases that
tests/test_bad_input.py asserts in `make check`)."""

from __future__ import annotations

import pytest


@pytest.mark.soak_only
def test_record_bad_input_table(tmp_path):
    from reliability import record
    from test_bad_input import all_outcomes

    rows = all_outcomes(tmp_path)
    record("bad-input", {"cases": rows})
    failed = [row for row in rows if row["ok"] != "True"]
    assert failed == [], failed
    assert len(rows) >= 30
