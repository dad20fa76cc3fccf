"""Running the plan: repeats interleaved across contestants, each measurement isolated.

Every measurement runs in a fresh subprocess forked from a clean fork server that has
SQLAlchemy and the drivers already imported, so it starts in milliseconds yet shares no
threads, pools, caches or memory peaks with the measurements before it. The order of the
contestants rotates from one repeat to the next, so no contestant always runs first (cold
page cache) or last (warm CPU).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from . import measure
from .contestants import Contestant
from .measure import Spec

PRELOAD = [
    "async_orm_bench.measure",
    "sqlalchemy.ext.asyncio",
    "sqlalchemy.dialects.sqlite",
    "sqlalchemy.dialects.postgresql",
    "psycopg",
    "aiosqlite",
    "asyncpg",
    "asgiref.sync",
    "greenlet",
]


@dataclass(frozen=True)
class Case:
    """One workload at one size: ``concurrent`` has a case per N."""

    workload: str
    size: int
    ops: int
    warmup: int
    repeats: int

    @property
    def key(self) -> str:
        if self.workload == "concurrent":
            return f"concurrent/N={self.size}"
        return self.workload


@dataclass
class Record:
    case: Case
    contestant: str
    repeat: int
    result: dict[str, Any] | None = None
    error: str | None = None
    skipped: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "case": self.case.key,
            "workload": self.case.workload,
            "size": self.case.size,
            "contestant": self.contestant,
            "repeat": self.repeat,
            "result": self.result,
            "error": self.error,
            "skipped": self.skipped,
        }


@dataclass
class Plan:
    url: str
    """Full URL, password included: only ever handed to the measurement processes."""
    cases: list[Case]
    contestants: list[Contestant]
    repeats: int
    rows: int
    pool_size: int = 10
    max_overflow: int = 0
    pool_timeout: float = 2.0
    deadline: float = 30.0
    timeout: float = 600.0
    isolation: str = "process"
    options: dict[str, Any] = field(default_factory=dict)
    """Passed to every measurement (see ``Spec.options``)."""
    before: Callable[[Case], None] | None = None
    """Called in this process before each measurement (to reset the insert table)."""
    records: list[Record] = field(default_factory=list)

    def contestants_for(self, case: Case) -> list[Contestant]:
        """Who runs ``case``: in ``hop`` the SQLAlchemy asyncio peers all measure the same
        greenlet ``run_sync`` (no driver is involved), so only the first of them runs it."""
        if case.workload != "hop":
            return self.contestants
        peers = [c for c in self.contestants if c.name.startswith("sa_")]
        return [c for c in self.contestants if c not in peers[1:]]

    def total(self) -> int:
        return sum(min(c.repeats, self.repeats) * len(self.contestants_for(c)) for c in self.cases)


class Progress:
    """One status line on a terminal; otherwise one line per case per repeat."""

    def __init__(self, total: int, quiet: bool = False, stream: Any = None) -> None:
        self.total = total
        self.done = 0
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()

    def _eta(self) -> str:
        if not self.done:
            return ""
        spent = time.monotonic() - self.started
        left = spent / self.done * (self.total - self.done)
        return f" ~{left:.0f}s left"

    def status(self, text: str) -> None:
        if self.quiet or not self.tty:
            return
        line = f"[{self.done:>3}/{self.total}]{self._eta()} {text}"
        self.stream.write("\r\033[K" + line[:150])
        self.stream.flush()

    def step(self) -> None:
        self.done += 1

    def line(self, text: str) -> None:
        if self.quiet:
            return
        prefix = "\r\033[K" if self.tty else ""
        self.stream.write(f"{prefix}[{self.done:>3}/{self.total}] {text}\n")
        self.stream.flush()

    def finish(self) -> None:
        if not self.quiet and self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()


_CONTEXT: multiprocessing.context.BaseContext | None = None


def _context() -> multiprocessing.context.BaseContext:
    global _CONTEXT
    if _CONTEXT is None:
        methods = multiprocessing.get_all_start_methods()
        if "forkserver" in methods:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(PRELOAD)
            _CONTEXT = ctx
        else:  # Windows: spawn only; slower to start but just as isolated
            _CONTEXT = multiprocessing.get_context("spawn")
    return _CONTEXT


def run_isolated(spec: Spec, timeout: float) -> dict[str, Any]:
    """Run ``spec`` in a fresh process; returns ``{"ok": ..., "result"|"error": ...}``."""
    ctx = _context()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(  # type: ignore[attr-defined]
        target=measure.child_main, args=(spec, send), name=f"bench-{spec.workload}"
    )
    proc.daemon = True
    proc.start()
    send.close()
    try:
        if recv.poll(timeout):
            try:
                msg: dict[str, Any] = recv.recv()
                return msg
            except EOFError:
                proc.join(5)
                return {
                    "ok": False,
                    "error": f"measurement process died (exit code {proc.exitcode})",
                }
        return {"ok": False, "error": f"no result within {timeout:.0f}s; killed"}
    finally:
        recv.close()
        proc.join(2)
        if proc.is_alive():
            proc.kill()
            proc.join()


def run_inline(spec: Spec) -> dict[str, Any]:
    try:
        return {"ok": True, "result": measure.run(spec)}
    except Exception as exc:
        import traceback

        return {
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }


def spec_for(plan: Plan, case: Case, contestant: Contestant) -> Spec:
    return Spec(
        workload=case.workload,
        contestant=contestant.name,
        url=plan.url,
        ops=case.ops,
        warmup=case.warmup,
        size=case.size,
        rows=plan.rows,
        pool_size=plan.pool_size,
        max_overflow=plan.max_overflow,
        pool_timeout=plan.pool_timeout,
        deadline=plan.deadline,
        options=plan.options,
    )


def short(result: dict[str, Any]) -> str:
    v = result["value"]
    unit = result["unit"]
    text = f"{v:,.0f}" if v >= 100 else f"{v:,.2f}"
    extra = ""
    if result.get("errors"):
        extra = f" ({result['errors']} err)"
    if result.get("stalled"):
        extra += " STALLED"
    return f"{text} {unit}{extra}"


def execute(plan: Plan, progress: Progress) -> list[Record]:
    """Run every case for every contestant, ``plan.repeats`` times, interleaved."""
    stalled: set[tuple[str, str]] = set()
    failed: set[tuple[str, str]] = set()
    for r in range(plan.repeats):
        for case in plan.cases:
            if r >= case.repeats:
                continue
            who = plan.contestants_for(case)
            order = who[r % len(who) :] + who[: r % len(who)]
            parts: list[str] = []
            for contestant in order:
                rec = Record(case, contestant.name, r)
                key = (case.key, contestant.name)
                progress.status(f"r{r + 1}/{plan.repeats} {case.key} {contestant.name}")
                if key in stalled:
                    rec.skipped = "stalled in an earlier repeat; not repeated"
                elif key in failed:
                    rec.skipped = "failed in an earlier repeat; not repeated"
                else:
                    if plan.before is not None:
                        plan.before(case)
                    spec = spec_for(plan, case, contestant)
                    if plan.isolation == "process":
                        msg = run_isolated(spec, plan.timeout)
                    else:
                        msg = run_inline(spec)
                    if msg["ok"]:
                        rec.result = msg["result"]
                        if msg["result"].get("stalled"):
                            stalled.add(key)
                    else:
                        rec.error = str(msg["error"])
                        if msg.get("traceback"):
                            rec.error += "\n" + str(msg["traceback"])
                        failed.add(key)
                plan.records.append(rec)
                progress.step()
                if rec.result is not None:
                    parts.append(f"{contestant.name} {short(rec.result)}")
                elif rec.error is not None:
                    parts.append(f"{contestant.name} ERROR {rec.error.splitlines()[0][:80]}")
            if parts:
                progress.line(f"r{r + 1}/{plan.repeats} {case.key}: " + " | ".join(parts))
    progress.finish()
    return plan.records


def with_repeats(case: Case, repeats: int) -> Case:
    return replace(case, repeats=repeats)
