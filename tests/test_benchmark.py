"""The benchmark's smoke mode runs end to end (no timing is asserted: a benchmark is no test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from tests.servers import free_port

REPO = Path(__file__).resolve().parent.parent

# benchmarks/run.py serves its HTTP approaches with a real gunicorn.
pytestmark = pytest.mark.e2e


def test_benchmark_quick_mode_measures_every_approach(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text((REPO / "README.md").read_text())
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
        "--out", str(tmp_path), "--no-plot", "--port", str(free_port()),
        "--readme", str(readme),
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
    results = {
        (r["approach"], r["dataset"]): r
        for r in json.loads((tmp_path / "benchmark.json").read_text())
    }
    approaches = {"copy-psql", "copy-psql-exact", "ours-csv", "ours-ndjson", "ours-copy",
                  "http-ours-csv"}  # fmt: skip
    datasets = {"synthetic-2000", "text-2000"}
    assert set(results) == {(a, d) for a in approaches | {"column-costs"} for d in datasets}
    assert all(r["rows"] == 2000 for r in results.values() if r["approach"] != "column-costs")
    for dataset in datasets:
        ours = results[("ours-csv", dataset)]
        # COPY mode gives the very same file as the standard path, in process and over
        # HTTP: on the text-heavy set too (quotes, line breaks, CJK, emoji, empty strings).
        assert results[("ours-copy", dataset)]["bytes"] == ours["bytes"]
        assert results[("http-ours-csv", dataset)]["bytes"] == ours["bytes"]
        # Baseline B is COPY of the export's own SELECT: the same cells, without the header.
        exact = results[("copy-psql-exact", dataset)]
        assert 0 < exact["bytes"] < ours["bytes"]
    http = results[("http-ours-csv", "synthetic-2000")]
    assert http["peak_mb"] >= http["idle_mb"] > 0
    table = (tmp_path / "benchmark.md").read_text()
    assert "| synthetic-2000 (2,000 rows) | COPY via psql (baseline A) | " in table
    assert (
        "| text-2000 (2,000 rows) | COPY of the export's own SELECT via psql (baseline B) | "
        in table
    )
    assert table.count("(2,000 rows)") == 12
    # The goals against this run's figures, and what each column costs PostgreSQL.
    assert "| CSV, library defaults (COPY), ÷ B, 2,000 rows | ≤ 1.25x | " in table
    for dataset in datasets:
        costs = results[("column-costs", dataset)]
        assert [c["name"] for c in costs["columns"]] == [
            "id", "quantity", "amount", "ratio", "code", "label", "note", "active", "created",
            "day",
        ]  # fmt: skip
        assert costs["scan"] > 0 and all(c["a"] > 0 and c["b"] > 0 for c in costs["columns"])
        assert f"| {dataset} | created | datetime | " in table
    # --readme replaced the README's table between its markers, and nothing else.
    original, written = (REPO / "README.md").read_text(), readme.read_text()
    start = "<!-- benchmark-table: written by benchmarks/run.py --readme -->"
    end = "<!-- /benchmark-table -->"
    assert written.split(start)[0] == original.split(start)[0]
    assert written.split(end)[1] == original.split(end)[1]
    section = written.split(start)[1].split(end)[0]
    assert "--rows 2000 --quick" in section
    assert "| COPY via psql (baseline A) | " in section
    assert "| CSV (COPY by default) | " in section
    assert "NDJSON" not in section  # not measured in a quick run: no row
