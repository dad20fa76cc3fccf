"""Instruction counts of two async_orm source trees, side by side in one sitting.

    python ab.py BEFORE_DIR AFTER_DIR [--workloads pk_get,insert_commit,request,concurrent]
                 [--seeds 0,1,2] [--n 500] [--jobs 2] [--url SYNC_URL]

Each directory holds an ``async_orm/`` package (e.g. ``git archive c2cd50e | tar -x -C
DIR``); it is put first on ``PYTHONPATH``.  Run it with a Python whose environment has
SQLAlchemy but *no* installed async_orm (an editable install's finder wins over
``PYTHONPATH``).  Each (version, workload, seed) runs ``work.py`` under
``valgrind --tool=callgrind --instr-atstart=no`` with ``PYTHONHASHSEED`` set, counting
only the measured operations (of this process: a database server's work is not counted);
``--url`` runs them on that database instead of a SQLite file (with ``--jobs 1``: the
workload recreates its table).  The report gives instructions per operation, medians over
the seeds, and after/before.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent


def count(tree: str, workload: str, seed: int, n: int, out_dir: str, url: str = "") -> int:
    out = os.path.join(out_dir, f"cg-{Path(tree).name}-{workload}-{seed}.out")
    env = {**os.environ, "CGCTL": "1", "PYTHONHASHSEED": str(seed), "PYTHONPATH": tree}
    if url:
        env["WORK_URL"] = url
    proc = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            sys.executable,
            str(HERE / "work.py"),
            workload,
            str(n),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    if proc.returncode:
        detail = proc.stderr[-3000:]
        raise SystemExit(f"work.py {workload} failed ({tree}, seed {seed}):\n{detail}")
    match = re.search(r"^totals:\s+(\d+)", Path(out).read_text(), re.MULTILINE)
    assert match, f"no totals in {out}"
    return int(match.group(1)) // n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--workloads", default="pk_get,insert_commit,request,concurrent")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--url", default="", help="a sync database URL instead of SQLite")
    args = parser.parse_args()
    if args.url and args.jobs != 1:
        parser.error("--url needs --jobs 1 (each run recreates the workload's table)")
    trees = {"before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    workloads = args.workloads.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [(v, w, s) for w in workloads for s in seeds for v in trees]
    with tempfile.TemporaryDirectory() as out_dir, ThreadPoolExecutor(args.jobs) as pool:
        futures = {
            job: pool.submit(count, trees[job[0]], *job[1:], args.n, out_dir, args.url)
            for job in jobs
        }
        results = {job: future.result() for job, future in futures.items()}
    print(f"{'workload':<15}{'before':>12}{'after':>12}{'after/before':>14}  per seed")
    for w in workloads:
        before = [results["before", w, s] for s in seeds]
        after = [results["after", w, s] for s in seeds]
        ratio = statistics.median(after) / statistics.median(before)
        per_seed = " ".join(f"{a / b:.3f}" for a, b in zip(after, before, strict=True))
        print(
            f"{w:<15}{statistics.median(before):>12,.0f}{statistics.median(after):>12,.0f}"
            f"{ratio:>14.3f}  {per_seed}"
        )


if __name__ == "__main__":
    main()
