"""``python -m async_orm_bench``: parse the flags, prepare the data, run, report, save."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.metadata
import io
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from sqlalchemy.engine import make_url

from . import models
from .contestants import (
    BY_NAME,
    CONTESTANTS,
    INSTALL,
    SYNC_DRIVERS,
    missing_modules,
    unavailable_reason,
)
from .measure import WORKLOADS
from .report import Json, evaluate, read_json, run_name, summarize, table, targets_rst, write_json
from .runner import Case, Plan, Progress, execute


@dataclass(frozen=True)
class Preset:
    repeats: int
    rows: int
    ops: dict[str, int]
    bulk_size: int
    select_rows: int
    stream_rows: int
    concurrency: tuple[int, ...]
    requests: int
    deadline: float
    heavy_repeats: int = 0
    """Repeats of ``stream`` and ``concurrent`` (slow ones); 0 means ``repeats``."""


PRESETS = {
    # CI smoke run: everything runs once, on tiny sizes; a few seconds.
    "quick": Preset(
        repeats=1,
        rows=1_000,
        ops={"pk_get": 200, "select_10": 100, "insert_commit": 50, "bulk_insert": 2,
             "select_many": 2, "stream": 1, "hop": 500, "hops_per_request": 5},
        bulk_size=100,
        select_rows=1_000,
        stream_rows=10_000,
        concurrency=(1, 10),
        requests=40,
        deadline=5.0,
    ),
    # `python -m async_orm_bench`: every workload, shorter, well under a minute on SQLite.
    "default": Preset(
        repeats=3,
        rows=10_000,
        ops={"pk_get": 1_000, "select_10": 500, "insert_commit": 200, "bulk_insert": 3,
             "select_many": 2, "stream": 1, "hop": 3_000, "hops_per_request": 20},
        bulk_size=1_000,
        select_rows=10_000,
        stream_rows=50_000,
        concurrency=(10, 100),
        requests=200,
        deadline=3.0,
        heavy_repeats=2,
    ),
    # The full suite (what the docs show): full sizes; many short repeats, so that the
    # two halves of each paired ratio run seconds apart on a machine whose load drifts.
    "full": Preset(
        repeats=9,
        rows=10_000,
        ops={"pk_get": 5_000, "select_10": 3_000, "insert_commit": 1_000, "bulk_insert": 10,
             "select_many": 8, "stream": 1, "hop": 20_000, "hops_per_request": 100},
        bulk_size=1_000,
        select_rows=10_000,
        stream_rows=1_000_000,
        concurrency=(1, 10, 100, 1_000),
        requests=1_500,
        deadline=30.0,
        heavy_repeats=5,
    ),
}  # fmt: skip


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x.replace("_", "")) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas: {text}") from exc


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m async_orm_bench",
        description=(
            "Benchmark async_orm against a plain sync Session, sqlalchemy.ext.asyncio and "
            "per-call thread offloading. Default: a short run on a throwaway SQLite file."
        ),
        epilog=(
            "examples:\n"
            "  python -m async_orm_bench\n"
            "  python -m async_orm_bench --url postgresql+psycopg://user@localhost/db\n"
            "  python -m async_orm_bench --full --json out.json --plots out/\n"
            "  python -m async_orm_bench --full --save   # the results the docs show\n"
            "  python -m async_orm_bench --quick --workloads pk_get,hop\n"
            f"workloads: {', '.join(WORKLOADS)}\n"
            f"contestants: {', '.join(c.name for c in CONTESTANTS)}"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", help="database URL (sync or async driver); default: SQLite file")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smoke-run sizes (seconds, for CI)")
    size.add_argument("--full", action="store_true", help="the full suite (what the docs show)")
    p.add_argument("--workloads", type=_names, help="comma-separated subset of workloads")
    p.add_argument("--contestants", type=_names, help="comma-separated subset of contestants")
    p.add_argument("--repeats", type=int, help="interleaved repeats per measurement")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every op count")
    p.add_argument("--rows", type=int, help="rows in bench_item")
    p.add_argument("--bulk-size", type=int, help="rows per add_all (default 1000)")
    p.add_argument("--select-rows", type=int, help="rows for select_many (default 10000)")
    p.add_argument("--stream-rows", type=int, help="rows to stream")
    p.add_argument("--concurrency", type=_ints, help="N values for concurrent, e.g. 1,10,100")
    p.add_argument("--requests", type=int, help="total requests per concurrent measurement")
    p.add_argument("--deadline", type=float, help="seconds before a concurrent run is stalled")
    p.add_argument("--pool-size", type=int, default=10)
    p.add_argument("--max-overflow", type=int, default=0)
    p.add_argument("--pool-timeout", type=float, default=2.0)
    p.add_argument(
        "--sqlite-journal",
        choices=("wal", "delete"),
        default="wal",
        help=(
            "SQLite: wal = journal_mode=WAL, synchronous=NORMAL (default; measures the "
            "library, not the disk's fsync); delete = SQLite's own default, an fsync per commit"
        ),
    )
    p.add_argument(
        "--cpus",
        type=_ints,
        help="pin each measurement process to these CPUs, e.g. 0 (Linux; shows what thread "
        "hops cost when the loop and the worker share a core)",
    )
    p.add_argument("--timeout", type=float, default=900.0, help="kill a measurement after this")
    p.add_argument(
        "--isolation",
        choices=("process", "none"),
        default="process",
        help="run each measurement in a fresh process (default) or in this one",
    )
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--plots", metavar="DIR", help="write PNG plots into DIR (needs matplotlib)")
    p.add_argument("--report", metavar="JSON", help="only print/plot an earlier run's JSON")
    p.add_argument(
        "--save",
        action="store_true",
        help="write the run into benchmarks/results/ (JSON, table, plots) and refresh the "
        "targets table of docs/benchmarks.rst; with --report, re-render a saved run there",
    )
    p.add_argument(
        "--baseline",
        metavar="TREE",
        help="a source tree of another async_orm revision (e.g. made with 'git worktree add "
        "/tmp/base HEAD~1'): its async_orm package runs as the contestant async_orm_baseline, "
        "side by side with the installed one in the same run (the table's 'async_orm /' "
        "column is then the ratio of the two)",
    )
    p.add_argument("--list", action="store_true", help="list contestants and whether they run")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    return p


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _server_version(url: str) -> str:
    from sqlalchemy import create_engine, text

    engine = create_engine(models.sync_url(url))
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                return "SQLite " + str(conn.scalar(text("select sqlite_version()")))
            if engine.dialect.name == "postgresql":
                return str(conn.scalar(text("show server_version")))
            return str(engine.dialect.server_version_info)
    finally:
        engine.dispose()


def _async_orm_version() -> str | None:
    try:
        return str(getattr(importlib.import_module("async_orm"), "__version__", None))
    except Exception:
        return None


def _revision(tree: str) -> str | None:
    """The git revision of ``tree`` (with '+changes' when its async_orm differs from it)."""
    try:
        rev = subprocess.run(
            ["git", "-C", tree, "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", tree, "status", "--porcelain", "--", "async_orm"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None  # not a git checkout (an unpacked archive): the tree path says it
    return rev + ("+changes" if dirty else "")


def _cases(args: argparse.Namespace, preset: Preset, workloads: list[str]) -> list[Case]:
    scale: float = args.scale

    def ops(w: str) -> int:
        return max(1, round(preset.ops[w] * scale))

    def warm(w: str) -> int:
        return max(1, ops(w) // 10)

    bulk = args.bulk_size or preset.bulk_size
    select_rows = args.select_rows or preset.select_rows
    stream_rows = args.stream_rows if args.stream_rows is not None else preset.stream_rows
    repeats = args.repeats or preset.repeats
    heavy = args.repeats or preset.heavy_repeats or repeats
    cases: list[Case] = []
    for w in workloads:
        if w == "concurrent":
            total = max(1, round((args.requests or preset.requests) * scale))
            for n in args.concurrency or preset.concurrency:
                cases.append(Case(w, n, max(total, n), 0, heavy))
        elif w == "bulk_insert":
            cases.append(Case(w, bulk, ops(w), 1, repeats))
        elif w == "select_many":
            cases.append(Case(w, select_rows, ops(w), 1, repeats))
        elif w == "stream":
            cases.append(Case(w, stream_rows, 1, 1_000, heavy))
        elif w == "hops_per_request":
            cases.append(Case(w, 0, ops(w), 2, 1))  # a count, not a time: once is enough
        else:
            cases.append(Case(w, 0, ops(w), warm(w), repeats))
    return cases


def run(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = sys.stdout

    if args.report:
        earlier = read_json(args.report)
        print(table(earlier), file=out)
        if args.plots:
            _plots(earlier, args.plots)
        return 0

    preset = PRESETS["quick" if args.quick else "full" if args.full else "default"]
    tmpdir: str | None = None
    if args.url:
        url = make_url(args.url)
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            print("bench needs a SQLite *file* (several connections share it)", file=sys.stderr)
            return 2
    else:
        tmpdir = tempfile.mkdtemp(prefix="async_orm-bench-")
        url = make_url("sqlite:///" + os.path.join(tmpdir, "bench.db"))
    backend = url.get_backend_name()
    url_secret = url.render_as_string(hide_password=False)
    url_shown = url.render_as_string(hide_password=True)
    if tmpdir is not None:
        url_shown = "sqlite:///<temporary file>"

    workloads = args.workloads or list(WORKLOADS)
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        print(
            f"unknown workload(s) {unknown}; choose from {', '.join(WORKLOADS)}", file=sys.stderr
        )
        return 2
    wanted = args.contestants or [c.name for c in CONTESTANTS if c.default]
    baseline = ""
    if args.baseline:
        baseline = os.path.abspath(args.baseline)
        if not os.path.isfile(os.path.join(baseline, "async_orm", "__init__.py")):
            print(f"--baseline {args.baseline}: no async_orm/__init__.py there", file=sys.stderr)
            return 2
        if "async_orm_baseline" not in wanted:
            wanted.append("async_orm_baseline")
    unknown = [c for c in wanted if c not in BY_NAME]
    if unknown:
        names = ", ".join(BY_NAME)
        print(f"unknown contestant(s) {unknown}; choose from {names}", file=sys.stderr)
        return 2

    driver = SYNC_DRIVERS.get(backend)
    if driver and missing_modules((driver[0],)):
        print(f"{backend} needs the {driver[0]} driver: {driver[1]}", file=sys.stderr)
        return 2

    skipped: list[dict[str, str]] = []
    contestants = []
    for name in wanted:
        c = BY_NAME[name]
        reason = unavailable_reason(c, backend, baseline)
        if reason is None:
            contestants.append(c)
        elif c.runs_on(backend):
            skipped.append({"contestant": name, "reason": reason})
    if args.list:
        for c in CONTESTANTS:
            why = unavailable_reason(c, backend, baseline)
            print(f"{c.name:<15} {c.label:<36} {'runs' if why is None else why}", file=out)
        return 0
    for note in skipped:
        print(f"note: skipping {note['contestant']}: {note['reason']}", file=sys.stderr)
    if not contestants:
        print("no contestant can run here", file=sys.stderr)
        return 2

    cases = _cases(args, preset, workloads)
    rows = max([args.rows or preset.rows] + [c.size for c in cases if c.workload == "select_many"])
    stream_rows = max([c.size for c in cases if c.workload == "stream"], default=0)
    repeats = args.repeats or preset.repeats

    def before(case: Case) -> None:
        if case.workload in ("insert_commit", "bulk_insert"):
            models.reset_inserts(url_secret)

    options: dict[str, object] = {}
    if backend == "sqlite":
        options["sqlite_synchronous"] = "NORMAL" if args.sqlite_journal == "wal" else "FULL"
    if args.cpus:
        options["cpus"] = list(args.cpus)
    if baseline:
        options["baseline"] = baseline
    plan = Plan(
        url=url_secret,
        cases=cases,
        contestants=contestants,
        repeats=repeats,
        rows=rows,
        pool_size=args.pool_size,
        max_overflow=args.max_overflow,
        pool_timeout=args.pool_timeout,
        deadline=args.deadline or preset.deadline,
        timeout=args.timeout,
        isolation=args.isolation,
        before=before,
        options=options,
    )
    progress = Progress(plan.total(), quiet=args.quiet)
    started = time.monotonic()
    meta: Json = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "backend": backend,
        "url": url_shown,
        "preset": "quick" if args.quick else "full" if args.full else "default",
        "argv": list(sys.argv[1:] if argv is None else argv),
        "repeats": repeats,
        "heavy_repeats": max(
            (c.repeats for c in cases if c.workload in ("stream", "concurrent")), default=repeats
        ),
        "rows": rows,
        "pool_size": plan.pool_size,
        "max_overflow": plan.max_overflow,
        "pool_timeout": plan.pool_timeout,
        "deadline": plan.deadline,
        "isolation": plan.isolation,
        "sqlite_journal": args.sqlite_journal if backend == "sqlite" else None,
        "cpus": list(args.cpus) if args.cpus else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu(),
        "cores": os.cpu_count(),
        "loadavg_start": _loadavg(),
        "versions": {
            d: _version(d)
            for d in ("sqlalchemy", "psycopg", "aiosqlite", "asyncpg", "asgiref", "greenlet")
        },
        "async_orm": _async_orm_version(),
        "baseline": {"tree": baseline, "revision": _revision(baseline)} if baseline else None,
        "contestants": [c.name for c in contestants],
        "skipped": skipped,
    }
    try:
        if not args.quiet:
            print(f"preparing {backend} data ({rows:,} rows, stream {stream_rows:,})...",
                  file=sys.stderr)  # fmt: skip
        models.prepare(
            url_secret, rows, stream_rows, args.sqlite_journal if backend == "sqlite" else ""
        )
        meta["server"] = _server_version(url_secret)
        records = execute(plan, progress)
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    meta["loadavg_end"] = _loadavg()
    meta["seconds"] = round(time.monotonic() - started, 1)
    raw = [r.to_json() for r in records]
    summary = summarize(raw)
    data: Json = {"meta": meta, "summary": summary, "records": raw}
    data["targets"] = evaluate(raw, summary, meta)
    print(table(data), file=out)
    print(f"\n{len(raw)} measurements in {meta['seconds']}s", file=out)
    if args.json:
        write_json(data, args.json)
        print(f"wrote {args.json}", file=out)
    if args.plots:
        _plots(data, args.plots)
    errors = [r for r in raw if r["error"]]
    for r in errors:
        print(f"ERROR {r['case']} {r['contestant']}: {r['error']}", file=sys.stderr)
    return 1 if errors else 0


def _plots(data: Json, outdir: str) -> None:
    if missing_modules(("matplotlib",)):
        print(f"note: no plots: {INSTALL}", file=sys.stderr)
        return
    from .plots import plot

    for path in plot(data, outdir):
        print(f"wrote {path}")


#: Where ``--save`` writes: ``benchmarks/results/`` of the checkout this package runs from.
RESULTS = Path(__file__).resolve().parent.parent / "results"
#: The runs whose targets docs/benchmarks.rst tabulates, in the table's order.
SAVED_RUNS = ("sqlite", "postgresql", "sqlite-1cpu", "postgresql-1cpu")


class _Tee(io.TextIOBase):
    """Everything written goes to each of ``streams``."""

    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


def save(argv: list[str]) -> int:
    """``--save``: run (or, with ``--report``, re-render) and write into :data:`RESULTS`.

    Per run, named by :func:`.report.run_name` (``sqlite``, ``postgresql-1cpu``, ...):
    ``<name>.json`` (every measurement), ``<name>.txt`` (the printed tables) and
    ``<name>-*.png``; then ``targets.inc``, the targets of every saved run as the table that
    docs/benchmarks.rst includes.
    """
    args = parser().parse_args(argv)
    if not RESULTS.is_dir():
        print(
            f"--save writes into {RESULTS}, which does not exist: install this package "
            "from an async_orm checkout (pip install -e ./benchmarks)",
            file=sys.stderr,
        )
        return 2
    if args.json or args.plots:
        print("--save chooses where JSON and plots go: drop --json and --plots", file=sys.stderr)
        return 2
    rest = [a for a in argv if a != "--save"]
    if args.report:
        name = run_name(read_json(args.report)["meta"])
    else:
        backend = models.backend_of(args.url) if args.url else "sqlite"
        name = run_name({"backend": backend, "cpus": list(args.cpus or [])})
        rest += ["--json", str(RESULTS / f"{name}.json")]
    rest += ["--plots", str(RESULTS)]
    txt = RESULTS / f"{name}.txt"
    printed = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, printed)):
        rc = run(rest)
    if rc == 2:  # refused before running: keep what was saved
        return rc
    lines = printed.getvalue().splitlines(keepends=True)
    txt.write_text("".join(x for x in lines if not x.startswith("wrote ")))
    print(f"wrote {txt}")
    saved = [RESULTS / f"{n}.json" for n in SAVED_RUNS]
    runs = [read_json(str(path)) for path in saved if path.exists()]
    inc = RESULTS / "targets.inc"
    inc.write_text(targets_rst(runs) if runs else "(no results yet)\n")
    print(f"wrote {inc}")
    return rc


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m async_orm_bench``; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return save(argv) if "--save" in argv else run(argv)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


__all__ = ["PRESETS", "Preset", "main", "run", "save"]
