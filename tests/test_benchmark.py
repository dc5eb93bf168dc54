"""The benchmark's smoke mode runs end to end (no timing is asserted: a benchmark is no test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

REPO = Path(__file__).resolve().parent.parent

# benchmarks/run.py serves its HTTP approaches with a real gunicorn.
pytestmark = pytest.mark.e2e


def test_benchmark_quick_mode_measures_every_approach(tmp_path):
    database = settings.DATABASES["default"]
    db = f"{database['TEST'].get('NAME') or 'test_streamexport'}_bench"
    env = dict(
        os.environ,
        PGHOST=database["HOST"],
        PGPORT=str(database["PORT"]),
        PGUSER=database["USER"],
        PGPASSWORD=database["PASSWORD"],
    )
    command = [
        sys.executable, "benchmarks/run.py", "--rows", "2000", "--quick", "--db", db,
        "--out", str(tmp_path), "--no-plot", "--port", "18590",
    ]  # fmt: skip
    try:
        done = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        subprocess.run(
            ["psql", "-X", "-q", "-d", "postgres", "-c", f'DROP DATABASE IF EXISTS "{db}"'],
            env=env, capture_output=True, timeout=60,
        )  # fmt: skip
    results = {r["approach"]: r for r in json.loads((tmp_path / "benchmark.json").read_text())}
    assert set(results) == {"copy-psql", "ours-csv", "ours-ndjson", "ours-copy", "http-ours-csv"}
    assert all(r["rows"] == 2000 for r in results.values())
    # COPY mode gives the very same file as the standard path, in process and over HTTP.
    assert results["ours-copy"]["bytes"] == results["ours-csv"]["bytes"]
    assert results["http-ours-csv"]["bytes"] == results["ours-csv"]["bytes"]
    assert results["http-ours-csv"]["peak_mb"] >= results["http-ours-csv"]["idle_mb"] > 0
    table = (tmp_path / "benchmark.md").read_text()
    assert "| synthetic-2000 (2,000 rows) | COPY via psql (baseline) |" in table
    assert table.count("(2,000 rows)") == 5
