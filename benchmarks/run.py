"""The full benchmark suite of issue 6, writing the results that the docs show.

    python benchmarks/run.py                        # SQLite (a throwaway file)
    python benchmarks/run.py --url postgresql+psycopg://postgres@127.0.0.1:5432/test
    python benchmarks/run.py --sqlite --url postgresql+psycopg://...   # both, one after the other
    python benchmarks/run.py --cpus 0 ...           # pinned to CPU 0: <backend>-1cpu.*

Every other flag goes to ``python -m async_orm bench`` (for example ``--repeats 3`` or
``--workloads pk_get,hop``). Each backend's run writes ``benchmarks/results/<backend>.json``,
``<backend>.txt`` (the printed table) and ``<backend>-*.png``, and copies the PNGs and the
table to ``docs/_static/bench/`` for docs/benchmarks.rst.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
STATIC = ROOT / "docs" / "_static" / "bench"


class Tee:
    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from async_orm._bench import main as bench
    from async_orm._bench.models import backend_of
    from async_orm._bench.report import read_json, run_name, targets_rst

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", help="run against this database (PostgreSQL for the PG targets)")
    p.add_argument("--sqlite", action="store_true", help="also run SQLite when --url is given")
    p.add_argument(
        "--cpus",
        help="pin every measurement process (all contestants alike) to these CPUs, e.g. 0; "
        "the results are saved as <backend>-<n>cpu.*",
    )
    args, extra = p.parse_known_args()
    cpus = [c for c in (args.cpus or "").split(",") if c.strip()]
    if cpus:
        extra += ["--cpus", args.cpus]
    runs: list[str | None] = []
    if args.sqlite or not args.url:
        runs.append(None)
    if args.url:
        runs.append(args.url)
    RESULTS.mkdir(parents=True, exist_ok=True)
    STATIC.mkdir(parents=True, exist_ok=True)
    worst = 0
    for url in runs:
        backend = run_name({"backend": backend_of(url) if url else "sqlite", "cpus": cpus})
        argv = ["--full", *extra, "--json", str(RESULTS / f"{backend}.json")]
        argv += ["--plots", str(RESULTS)]
        if url:
            argv += ["--url", url]
        with (
            open(RESULTS / f"{backend}.txt", "w") as txt,
            contextlib.redirect_stdout(Tee(sys.stdout, txt)),
        ):
            rc = bench(argv)
        worst = max(worst, rc)
        table = RESULTS / f"{backend}.txt"
        lines = table.read_text().splitlines(keepends=True)
        table.write_text("".join(x for x in lines if not x.startswith("wrote ")))
        for made in [*RESULTS.glob(f"{backend}-*.png"), RESULTS / f"{backend}.txt"]:
            shutil.copy(made, STATIC / made.name)
    # the targets of every committed run, as the table docs/benchmarks.rst includes
    saved = [
        RESULTS / f"{b}.json" for b in ("sqlite", "postgresql", "sqlite-1cpu", "postgresql-1cpu")
    ]
    runs = [read_json(str(p)) for p in saved if p.exists()]
    (STATIC / "targets.inc").write_text(targets_rst(runs) if runs else "(no results yet)\n")
    return worst


if __name__ == "__main__":
    raise SystemExit(main())
