"""Print how long one export works between two turns it gives other requests (CPU time).

    python -m benchmarks.holds synthetic-1000000 ndjson
    python -m benchmarks.holds text-1000000 csv --chunk-size 20000 --buffer-size 1048576

A gevent worker answers other requests only when an export gives it back, so the longest an
export works between two turns bounds their wait (benchmarks/run.py measures that wait
itself, which a loaded machine moves a lot).  This counts the CPU time of this thread
(``time.thread_time()``: time blocked waiting for PostgreSQL is not counted) between the
stream's consecutive ``time.sleep(0)`` calls, over the first ``--rows`` rows of data set
``dataset`` (``benchmarks/datasets.py``, seeded by ``benchmarks/run.py`` in ``--db``), in
this process, and prints the turns and the holds' percentiles in milliseconds.  Settings
from ``benchmarks/settings.py``: the library's defaults unless given.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("format")
    parser.add_argument("--db", default=os.environ.get("STREAMEXPORT_BENCH_DB"))
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--chunk-size", type=int)
    parser.add_argument("--buffer-size", type=int)
    parser.add_argument("--time-slice", type=float)
    args = parser.parse_args(argv)
    if args.db:
        os.environ["STREAMEXPORT_BENCH_DB"] = args.db
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from benchmarks.datasets import dataset
    from django_streamexport.plan import build_plan
    from django_streamexport.streaming import ExportStream

    queryset, fields = dataset(args.dataset)
    given = {"chunk_size": args.chunk_size, "buffer_size": args.buffer_size,
             "time_slice": args.time_slice}  # fmt: skip
    options = {name: value for name, value in given.items() if value is not None}
    plan = build_plan(queryset, fields=fields, format=args.format, **options)
    holds: list[float] = []
    last = time.thread_time()
    sleep = time.sleep

    def counting_sleep(seconds: float) -> None:
        nonlocal last
        holds.append(time.thread_time() - last)
        sleep(seconds)
        last = time.thread_time()

    time.sleep = counting_sleep  # the stream's turns: time.sleep(0)
    try:
        stream = ExportStream(plan)
        for _chunk in stream:
            if stream.rows >= args.rows:
                break
        stream.close()
    finally:
        time.sleep = sleep
    holds.sort()

    def ms(p: float) -> float:
        return holds[min(len(holds) - 1, int(len(holds) * p / 100))] * 1000

    print(
        f"{args.dataset} {args.format} chunk_size={plan.chunk_size} "
        f"buffer_size={plan.buffer_size} time_slice={getattr(plan, 'time_slice', None)}: "
        f"{len(holds)} turns "
        f"over {stream.rows:,} rows; hold p50 {ms(50):.2f} ms, p99 {ms(99):.2f} ms, "
        f"max {holds[-1] * 1000:.2f} ms"
    )


if __name__ == "__main__":
    main()
