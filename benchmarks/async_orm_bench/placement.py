"""Thread placement (issue 19): its table, and a two-process run that checks the spreading.

``python -m async_orm_bench.placement table RUN.json [--rst]``
    The async_orm rows of a run made with the placement contestants (``async_orm``,
    ``async_orm_colocated``, ``async_orm_colocated_pinned``), as paired ratios against the
    peers, with errors, peak threads and the CPUs the worker threads were allowed on.

``python -m async_orm_bench.placement two-process --url URL [--n 100] [--trials 3]``
    Two measurement processes started at once (two server processes sharing the machine,
    each with its own loop and pool), running ``concurrent`` N clients each, per contestant;
    prints the sum of their throughput and where each process's threads were allowed to
    run: as each process saw it (threads found by Python name, see
    :func:`.measure.thread_placement`) and as read from outside, in ``/proc/<pid>/task/*``,
    while they ran.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

from . import measure, models
from .contestants import BY_NAME
from .report import Json, paired_ratio, read_json
from .runner import _context

VARIANTS = ("async_orm", "async_orm_colocated", "async_orm_colocated_pinned")
PEERS = ("sa_psycopg", "sa_asyncpg", "sa_aiosqlite")


def _workers(rec: Json) -> str:
    placement = (rec.get("result") or {}).get("placement") or {}
    workers = placement.get("workers") or {}
    loop = placement.get("loop") or {}
    if not workers:
        return "-"
    return f"{'/'.join(workers.get('allowed', []))} (loop {loop.get('allowed', '?')})"


def rows(data: Json) -> list[dict[str, Any]]:
    """One row per (case, async_orm variant) with its median and paired ratios."""
    records = data["records"]
    summary = data["summary"]
    peers = [p for p in PEERS if any(p in e for e in summary.values())]
    out: list[dict[str, Any]] = []
    for case, entries in summary.items():
        for name in VARIANTS:
            e = entries.get(name)
            if e is None or "median" not in e:
                continue
            placements = sorted(
                {_workers(r) for r in records if r["case"] == case and r["contestant"] == name}
            )
            x = e["extras"]
            out.append(
                {
                    "case": case,
                    "contestant": name,
                    "label": BY_NAME[name].label,
                    "median": e["median"],
                    "unit": e["unit"],
                    "vs": {p: paired_ratio(records, case, name, p) for p in [*peers, "async_orm"]},
                    "errors": x.get("errors"),
                    "threads": x.get("peak_threads"),
                    "workers_on": "; ".join(placements),
                }
            )
        for p in peers:
            e = entries.get(p)
            if e is not None and "median" in e:
                x = e["extras"]
                out.append(
                    {
                        "case": case,
                        "contestant": p,
                        "label": BY_NAME[p].label,
                        "median": e["median"],
                        "unit": e["unit"],
                        "vs": {},
                        "errors": x.get("errors"),
                        "threads": x.get("peak_threads"),
                        "workers_on": "",
                    }
                )
    return out


def _r(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def text_table(data: Json) -> str:
    meta = data["meta"]
    lines = [
        f"{meta['backend']}, {meta['repeats']} repeats, load {meta['loadavg_start']} -> "
        f"{meta['loadavg_end']}, {meta['date']}"
    ]
    for row in rows(data):
        vs = "  ".join(f"vs {k} {_r(v)}" for k, v in row["vs"].items() if k != row["contestant"])
        errs = "" if row["errors"] is None else f" err {row['errors']} thr {row['threads']}"
        lines.append(
            f"{row['case']:<20}{row['label']:<38}{row['median']:>9,.0f} {row['unit']:<7}"
            f"{vs}{errs}  {row['workers_on']}"
        )
    return "\n".join(lines)


def rst_table(data: Json) -> str:
    """The rows as an RST list-table (what docs/benchmarks.rst includes)."""
    rs = rows(data)
    peers = [p for p in PEERS if rs and p in rs[0]["vs"]]
    head = ["case", "contestant", "median"]
    head += [f"vs {BY_NAME[p].label.split('+ ')[-1]}" for p in peers]
    head += ["vs async_orm (off)", "errors", "threads", "worker CPUs (loop)"]
    out = [".. list-table::", "   :header-rows: 1", ""]
    out.append("   * - " + head[0])
    out += [f"     - {h}" for h in head[1:]]
    for r in rs:
        cells = [r["case"], r["label"], f"{r['median']:,.0f} {r['unit']}"]
        cells += [_r(r["vs"].get(p)) for p in peers]
        off = r["contestant"] == "async_orm" or r["contestant"] not in VARIANTS
        cells.append("-" if off else _r(r["vs"].get("async_orm")))
        cells += [
            "-" if r["errors"] is None else str(r["errors"]),
            "-" if r["threads"] is None else str(r["threads"]),
            r["workers_on"] or "-",
        ]
        out.append("   * - " + cells[0])
        out += [f"     - {c}" for c in cells[1:]]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- two processes


def _outside(pid: int) -> dict[str, int]:
    """``Cpus_allowed_list`` -> number of threads of process ``pid``, read from /proc."""
    counts: dict[str, int] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return counts
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("Cpus_allowed_list:"):
                        key = line.split(":", 1)[1].strip()
                        counts[key] = counts.get(key, 0) + 1
        except OSError:
            continue
    return counts


def _child(spec: measure.Spec, barrier: Any, conn: Any) -> None:
    try:
        barrier.wait(30)
        t0 = time.time()
        result = measure.run(spec)
        msg = {"ok": True, "result": result, "start": t0, "end": time.time()}
    except BaseException as exc:
        msg = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    conn.send(msg)
    conn.close()
    sys.stdout.flush()
    os._exit(0)


def pair(spec: measure.Spec, probe_after: float) -> dict[str, Any]:
    """Run ``spec`` in two processes at once; their results and the outside view."""
    ctx = _context()
    barrier = ctx.Barrier(2)
    procs, pipes = [], []
    for i in range(2):
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(  # type: ignore[attr-defined]
            target=_child, args=(spec, barrier, send), name=f"bench-two-{i}"
        )
        p.daemon = True
        p.start()
        send.close()
        procs.append(p)
        pipes.append(recv)
    time.sleep(probe_after)
    outside = {p.pid: _outside(p.pid) for p in procs}
    results = []
    for p, recv in zip(procs, pipes, strict=True):
        results.append(recv.recv() if recv.poll(spec.deadline + 60) else {"ok": False})
        p.join(5)
    return {"results": results, "outside": {str(k): v for k, v in outside.items()}}


def two_process(args: argparse.Namespace) -> int:
    url = args.url
    names = args.contestants.split(",")
    models.prepare(url, 10_000, 0, "wal" if models.backend_of(url) == "sqlite" else "")
    log: list[dict[str, Any]] = []
    print(f"two processes, concurrent N={args.n} each, {args.requests} requests each, "
          f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    for trial in range(args.trials):
        order = names[trial % len(names) :] + names[: trial % len(names)]
        for name in order:
            spec = measure.Spec(
                workload="concurrent",
                contestant=name,
                url=url,
                ops=args.requests,
                warmup=0,
                size=args.n,
                pool_size=10,
                max_overflow=0,
                pool_timeout=2.0,
                deadline=60.0,
                options={"sqlite_synchronous": "NORMAL"} if "sqlite" in url else {},
            )
            got = pair(spec, args.probe_after)
            vals, where, errs = [], [], 0
            for msg in got["results"]:
                if not msg.get("ok"):
                    where.append(f"ERROR {msg.get('error')}")
                    continue
                res = msg["result"]
                vals.append(res["value"])
                errs += res.get("errors", 0)
                pl = res.get("placement") or {}
                w = pl.get("workers") or {}
                where.append(
                    f"pid {pl.get('pid', '?')}: workers {'/'.join(w.get('allowed', [])) or '-'}"
                    f" loop {(pl.get('loop') or {}).get('allowed', '-')}"
                )
            starts = [m["start"] for m in got["results"] if m.get("ok")]
            ends = [m["end"] for m in got["results"] if m.get("ok")]
            overlap = (
                (min(ends) - max(starts)) / (max(ends) - min(starts)) if len(ends) == 2 else 0
            )
            entry = {
                "trial": trial,
                "contestant": name,
                "values": vals,
                "sum": sum(vals),
                "errors": errs,
                "overlap": overlap,
                "inside": where,
                "outside": got["outside"],
                "results": got["results"],
            }
            log.append(entry)
            print(
                f"t{trial + 1} {name:<28} sum {sum(vals):>6,.0f} req/s "
                f"({' + '.join(f'{v:,.0f}' for v in vals)}) err {errs} overlap {overlap:.0%} | "
                + " | ".join(where)
                + f" | outside {json.dumps(got['outside'])}",
                flush=True,
            )
    print("\nmedian sum of the two processes' throughput:")
    for name in names:
        sums = [e["sum"] for e in log if e["contestant"] == name]
        print(f"  {BY_NAME[name].label:<38}{statistics.median(sums):>8,.0f} req/s  {sums}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"loadavg_end": os.getloadavg(), "log": log}, f, indent=1, default=str)
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m async_orm_bench.placement")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table", help="the placement table of a saved run")
    t.add_argument("json")
    t.add_argument("--rst", action="store_true")
    two = sub.add_parser("two-process", help="two measurement processes at once")
    two.add_argument("--url", required=True)
    two.add_argument("--n", type=int, default=100)
    two.add_argument("--requests", type=int, default=3000)
    two.add_argument("--trials", type=int, default=3)
    two.add_argument("--probe-after", type=float, default=1.5, help="seconds before /proc read")
    two.add_argument(
        "--contestants",
        default="async_orm,async_orm_colocated,async_orm_colocated_pinned,sa_psycopg,sa_asyncpg",
    )
    two.add_argument("--json")
    args = p.parse_args(argv)
    if args.cmd == "table":
        data = read_json(args.json)
        print(rst_table(data) if args.rst else text_table(data))
        return 0
    return two_process(args)


if __name__ == "__main__":
    raise SystemExit(main())
