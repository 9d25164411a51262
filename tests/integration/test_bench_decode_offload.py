"""Bench row 2b: the event loop's CPU per Opus packet, on the loop and through a real decode worker.

Run here for a few ticks: the row must come out with both figures, and the worker must really have
decoded (its process spent CPU on the packets), or the "via the worker" figure would mean nothing.
"""

from __future__ import annotations

import re

import pytest

from bench import decode_offload


def test_the_row_measures_both_ways_and_the_worker_really_decodes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode_offload, "CALLS", 3)
    lines: list[str] = []
    (row,) = decode_offload.run(True, lines.append).rows
    assert row.key == "2b" and row.ok
    figures = re.fullmatch(r"([\d.]+) / ([\d.]+) µs", row.value)
    assert figures is not None, row.value
    here, via_worker = (float(v) for v in figures.groups())
    assert here > 0 and via_worker > 0
    spent = re.search(r"worker process spent ([\d.]+) µs", row.detail)
    assert spent is not None, row.detail
    assert float(spent.group(1)) > 1.0  # libopus ran there: a 20 ms hybrid packet takes well over a microsecond
    assert "3 calls x 10 participants" in row.detail
