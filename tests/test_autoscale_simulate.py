"""``celery-fleet simulate``: the policy replayed on workloads (pure model, no processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from celery_fleet.autoscale.policy import recommended_policy
from celery_fleet.autoscale.simulate.model import compare, default_contenders, percentile
from celery_fleet.autoscale.simulate.report import COLUMNS, format_table
from celery_fleet.autoscale.simulate.workload import (
    PROFILES,
    TaskModel,
    WorkloadError,
    builtin_profile,
    load_workload_csv,
)
from celery_fleet.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["simulate", *args])
    return result.exit_code, result.output


def report(*args: str) -> dict:  # type: ignore[type-arg]
    code, out = run(*args, "--json")
    assert code == 0, out
    return json.loads(out)  # type: ignore[no-any-return]


@pytest.mark.parametrize("profile", PROFILES)
def test_cli_reports_every_contender_with_sane_fields(profile: str) -> None:
    data = report("--profile", profile, "--seed", "3")
    tasks = data["workload"]["tasks"]
    assert tasks > 0
    labels = [r["label"] for r in data["results"]]
    assert labels == ["celery-fleet", "keda-defaults", "hpa-defaults"]
    for r in data["results"]:
        assert r["completed"] == tasks, r  # every task ran to completion in the model
        assert 0 <= r["latency_p50"] <= r["latency_p95"] <= r["latency_p99"] <= r["latency_max"]
        assert 1 <= r["max_replicas"] <= 10
        assert r["worker_seconds"] > 0
        assert r["interrupted"] <= r["busy_removed"]
    ours = data["results"][0]
    assert ours["policy"]["countHeld"] is True
    assert data["results"][1]["policy"]["cooldownSeconds"] == 300


def test_cli_writes_a_plot(tmp_path: Path) -> None:
    out = tmp_path / "plots" / "burst.png"
    code, text = run("--profile", "burst", "--plot", str(out))
    assert code == 0, text
    assert "celery-fleet" in text
    assert "keda-defaults" in text
    assert f"plot: {out}" in text
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 40_000  # four timeline panels and two bar panels, not an empty canvas


def test_plot_without_matplotlib_ends_with_a_one_line_hint(tmp_path: Path) -> None:
    """matplotlib made unimportable in a fresh interpreter: no traceback, the extra named."""
    out = tmp_path / "burst.png"
    script = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from celery_fleet.cli import main\n"
        f"main(['simulate', '--profile', 'burst', '--plot', {str(out)!r}])\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "pip install 'celery-fleet[plot]'" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_table_columns_are_aligned_and_explained() -> None:
    results = compare(builtin_profile("burst"), recommended_policy())
    text = format_table(results)
    table, legend = text.split("\n\ncolumns:\n")
    header, rule, *rows = table.splitlines()
    assert len(rows) == 3
    assert len(rule) == len(header)
    # Each column's cells end where its header ends (left-aligned first column: start there).
    ends = []
    pos = 0
    for column in COLUMNS:
        start = header.index(column.header, pos)
        pos = start + len(column.header)
        ends.append(pos)
    for row in rows:
        assert row.startswith(tuple(r.label for r in results))
        for end in ends[1:]:
            assert row[end - 1] != " ", (row, end)
            assert end == len(row) or row[end] == " ", (row, end)
    # The legend names every column and says what it holds.
    for column in COLUMNS[1:]:
        assert column.header in legend
    assert "worker-seconds" in legend
    assert "cut and requeued" in legend
    # The cost column is relative to the first row.
    assert rows[0].split()[6] == "1.00x"


def test_the_baselines_are_the_real_defaults() -> None:
    """KEDA and a plain HPA create no spec.behavior: the older rules, not the behavior defaults."""
    _, keda, hpa = default_contenders(recommended_policy())
    for contender in (keda, hpa):
        assert contender.policy.behavior is None
        assert contender.policy.downscale_stabilization_seconds == 300
    assert keda.policy.count_held is False
    assert keda.policy.min_replicas == 0
    assert hpa.policy.min_replicas == 1


def test_ours_beats_keda_defaults_on_latency_for_bursts() -> None:
    for seed in (1, 2, 3):
        results = {
            r.label: r for r in compare(builtin_profile("burst", seed=seed), recommended_policy(), seed=seed)
        }
        ours, keda = results["celery-fleet"], results["keda-defaults"]
        assert ours.latency_p95 < keda.latency_p95, (seed, ours.latency_p95, keda.latency_p95)
        assert ours.latency_p50 < keda.latency_p50
        # ...without paying for it: KEDA's 300 s cooldown keeps idle workers after each burst.
        assert ours.worker_seconds < keda.worker_seconds
        assert ours.interrupted == 0


def test_idle_first_removal_never_interrupts_when_tasks_fit_the_drain_window() -> None:
    for profile in PROFILES:
        for r in compare(builtin_profile(profile), recommended_policy(), drain_window=60.0):
            assert r.interrupted == 0, (profile, r.label)


def test_a_short_drain_window_shows_interrupted_tasks() -> None:
    # Long tasks and no drain window: removing a busy worker cuts its task short.
    results = compare(
        builtin_profile("diurnal"),
        recommended_policy(),
        drain_window=0.0,
        tasks=TaskModel(20.0, 0.5),
    )
    assert any(r.interrupted > 0 for r in results)
    for r in results:
        assert r.interrupted <= r.busy_removed


def test_csv_workload(tmp_path: Path) -> None:
    csv_file = tmp_path / "load.csv"
    csv_file.write_text("time_s,tasks\n0,5\n2.5,3\n2,1\n30,10\n", encoding="utf-8")
    workload = load_workload_csv(csv_file)
    assert workload.total == 19
    assert workload.arrivals[:3] == (5, 0, 4)
    assert len(workload.arrivals) == 31
    data = report("--workload", str(csv_file), "--max-replicas", "4")
    assert all(r["completed"] == 19 for r in data["results"])
    assert all(r["max_replicas"] <= 4 for r in data["results"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("when,count\n1,2\n", "header must be 'time_s,tasks'"),
        ("time_s,tasks\n1,two\n", ":2: expected a number and an integer"),
        ("time_s,tasks\n1,2\n-1,2\n", ":3: time_s and tasks must be >= 0"),
        ("time_s,tasks\n", "no tasks"),
    ],
)
def test_bad_csv_is_a_clear_usage_error(tmp_path: Path, content: str, message: str) -> None:
    csv_file = tmp_path / "bad.csv"
    csv_file.write_text(content, encoding="utf-8")
    with pytest.raises(WorkloadError, match=message.replace("(", r"\(")):
        load_workload_csv(csv_file)
    code, out = run("--workload", str(csv_file))
    assert code == 2
    assert message in out


def test_cli_rejects_conflicting_options(tmp_path: Path) -> None:
    code, out = run("--profile", "burst", "--workload", str(tmp_path / "x.csv"))
    assert code == 2
    assert "not both" in out
    code, out = run("--min-replicas", "5", "--max-replicas", "2")
    assert code == 2
    assert "above --max-replicas" in out
    code, out = run("--workload", str(tmp_path / "missing.csv"))
    assert code == 2
    assert "cannot read" in out


def test_percentile_nearest_rank() -> None:
    assert percentile([], 95) == 0.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile(list(map(float, range(1, 101))), 95) == 95.0
    assert percentile([7.0], 99) == 7.0


def test_profiles_are_seeded() -> None:
    assert builtin_profile("steady", seed=4) == builtin_profile("steady", seed=4)
    assert builtin_profile("steady", seed=4) != builtin_profile("steady", seed=5)
