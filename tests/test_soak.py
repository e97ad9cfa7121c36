"""The soak command, short: ``bench/soak.py`` with 100 injections on one fleet, as CI runs it
(the full soak, 1,000 injections across seeds, is in the README)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support.fleet import REPO


@pytest.mark.slow
def test_a_short_soak_loses_and_doubles_nothing() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "soak.py"),
            *("--seeds", "5", "--injections", "100", "--pace", "0.3,0.9", "--jobs-per-injection", "3"),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    print(out.stdout[-6000:], out.stderr[-3000:])
    assert out.returncode == 0, "the soak found lost, doubled or unexplained runs (table above)"
    total = re.search(r"^\s*total\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", out.stdout, re.MULTILINE)
    assert total is not None, "no table"
    injections, busy, jobs, lost, doubled = (int(x) for x in total.groups())
    assert injections >= 100
    assert busy >= 1
    assert jobs >= 300
    assert (lost, doubled) == (0, 0)
