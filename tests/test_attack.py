"""scripts/attack.py --quick: the hardening check's attacks, small, so the script cannot rot.

The script starts its own servers (a private PostgreSQL cluster, PgBouncer, three gunicorns,
nginx) on free loopback ports, so this test needs no test database.  It asserts what the
full run must show (docs/hardening.md): every attack ran, and none found a leak, a 500, a cut
transfer for a refused filter, a traceback, a hidden fault or a bad command-line exit.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.servers import ROOT

pytestmark = pytest.mark.e2e


def test_quick_attack_finds_no_defect(tmp_path):
    report_path = tmp_path / "attack.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "attack.py"), "--quick",
         "--logs", str(tmp_path), "--json", str(report_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert report_path.exists(), done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert report["defects"] == [], done.stdout
    assert done.returncode == 0, done.stdout + done.stderr

    disconnects = report["disconnects"]
    assert disconnects["disconnects"] == report["counts"]["disconnects"]
    assert disconnects["leaks"] == 0 and disconnects["next_export_ok"]
    # Every reader path was attacked at least once.
    assert len(disconnects["per_path"]) == 6, disconnects["per_path"]

    kinds = report["faults"]["kinds"]
    assert set(kinds) == {
        "pg_terminate_backend",
        "PostgreSQL restart",
        "statement timeout",
        "idle-in-transaction timeout",
        "row limit",
    }
    for name, kind in kinds.items():
        assert kind["trials"] > 0 and kind["harness_errors"] == 0, (name, kind)
        assert kind["visible"] == kind["trials"] == kind["next_export_ok"], (name, kind)
        assert kind["leaks"] == 0, (name, kind)

    fuzz = report["fuzz"]
    families = fuzz["families"]
    # The query strings that were a 500 or a cut 200 before the hardening: each a 400.
    known = families.pop("known refusals (must be 400)")
    assert known["statuses"] == {"400": known["requests"]} and known["requests"] >= 19, known
    requests = {family: r["requests"] for family, r in families.items()}
    assert requests == {
        "public /exports/flights/": report["counts"]["public_fuzz"],
        "public /exports/flights/filtered/": report["counts"]["filtered_fuzz"],
        "admin export page": report["counts"]["admin_fuzz"],
    }
    for family, r in families.items():
        assert "500" not in r["statuses"] and r["cut"] == 0, (family, r)
        # The fuzz reaches both answers: exports and refusals.
        assert r["statuses"].get("200") and r["statuses"].get("400"), (family, r)
    assert fuzz["log"]["error_lines"] == fuzz["log"]["tracebacks"] == 0, fuzz["log"]
    assert fuzz["leaks"] == 0

    cli = report["cli"]
    assert cli["bad_invocations"] > 0 and cli["bad_ok"] == cli["bad_invocations"], cli["failures"]
    assert cli["tracebacks"] == 0
    assert cli["broken_pipe"]["ok"], cli["broken_pipe"]
