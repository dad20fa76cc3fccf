"""From raw records to medians, paired ratios, the targets, a table and JSON."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from .contestants import BY_NAME

Json = dict[str, Any]

#: Extras where the worst repeat is reported (a leak or an error in any repeat counts).
WORST_EXTRAS = ("errors", "incomplete", "peak_threads", "peak_rss_mb", "peak_growth_mb")
#: Extras reported as the median of the repeats.
MEDIAN_EXTRAS = ("p50_ms", "p99_ms", "mean_ms", "rows_per_s", "rss_growth_mb")


def run_name(meta: Json) -> str:
    """A run's file name stem: the database, plus ``-<n>cpu`` when its processes were pinned."""
    cpus = meta.get("cpus")
    return str(meta.get("backend", "bench")) + (f"-{len(cpus)}cpu" if cpus else "")


def pinned_to(meta: Json) -> str:
    """``pinned to CPU 0`` for a run whose processes were pinned, else ``""``."""
    cpus = meta.get("cpus")
    return f"pinned to CPU {','.join(map(str, cpus))}" if cpus else ""


def describe(workload: str, size: int, meta: Json) -> str:
    pool = f"pool {meta.get('pool_size', 10)}+{meta.get('max_overflow', 0)}"
    return {
        "pk_get": "primary-key get, one session",
        "select_10": "10-row select, one session",
        "insert_commit": "one insert + commit per request, session per request",
        "bulk_insert": f"add_all {size:,} rows + commit",
        "select_many": f"select {size:,} rows as ORM objects",
        "stream": f"stream {size:,} rows (session.stream)",
        "concurrent": f"N={size:,} concurrent requests (get, update, commit), {pool}",
        "hop": "cost of one hop: no-op call, no database",
        "hops_per_request": "thread hops per web request (open, get, update, commit, close)",
    }.get(workload, workload)


def hop_label(name: str, workload: str) -> str:
    """Contestant label; in ``hop`` say what is measured for those that have no thread hop."""
    label = BY_NAME[name].label if name in BY_NAME else name
    if workload == "hop":
        if name == "sync":
            return "plain function call (no hop)"
        if name.startswith("sa_"):
            return "SA asyncio run_sync (greenlet)"
    return label


def summarize(records: Iterable[Json]) -> Json:
    """``{case: {contestant: {median, min, max, values, unit, extras, ...}}}``."""
    out: Json = {}
    for rec in records:
        case = out.setdefault(rec["case"], {})
        entry = case.setdefault(
            rec["contestant"],
            {
                "workload": rec["workload"],
                "size": rec["size"],
                "values": [],
                "results": [],
                "errors": [],
                "skipped": [],
            },
        )
        if rec.get("result") is not None:
            entry["values"].append(rec["result"]["value"])
            entry["results"].append(rec["result"])
        if rec.get("error"):
            entry["errors"].append(rec["error"])
        if rec.get("skipped"):
            entry["skipped"].append(rec["skipped"])
    for case in out.values():
        for entry in case.values():
            results = entry.pop("results")
            vals = entry["values"]
            if vals:
                entry["median"] = statistics.median(vals)
                entry["min"] = min(vals)
                entry["max"] = max(vals)
                entry["unit"] = results[0]["unit"]
                entry["higher_is_better"] = results[0]["higher_is_better"]
            extras: Json = {}
            for key in WORST_EXTRAS:
                got = [r[key] for r in results if r.get(key) is not None]
                if got:
                    extras[key] = max(got)
            for key in MEDIAN_EXTRAS:
                got = [r[key] for r in results if r.get(key) is not None]
                if got:
                    extras[key] = statistics.median(got)
            if any(r.get("stalled") for r in results):
                extras["stalled"] = True
            types: dict[str, int] = {}
            for r in results:
                for k, v in (r.get("error_types") or {}).items():
                    types[k] = types.get(k, 0) + v
            if types:
                extras["error_types"] = types
            if results and "steps" in results[0]:
                extras["steps"] = results[0]["steps"]
            entry["extras"] = extras
    return out


def paired_ratio(records: Iterable[Json], case: str, a: str, b: str) -> float | None:
    """Median over repeats of value(a) / value(b), each pair taken from the same repeat."""
    by: dict[tuple[str, int], float] = {}
    for rec in records:
        if rec["case"] == case and rec.get("result") is not None:
            by[(rec["contestant"], rec["repeat"])] = rec["result"]["value"]
    ratios = [
        by[(a, r)] / by[(b, r)]
        for (name, r) in by
        if name == a and (b, r) in by and by[(b, r)] > 0
    ]
    return statistics.median(ratios) if ratios else None


@dataclass(frozen=True)
class Target:
    id: str
    text: str
    backend: str | None
    case: str
    a: str
    b: str | None
    op: str
    threshold: float
    metric: str = "value"


def targets(meta: Json) -> list[Target]:
    cap = int(meta.get("pool_size", 10)) + int(meta.get("max_overflow", 0))
    out = [
        Target("sqlite-get", "SQLite pk get vs SA+aiosqlite", "sqlite", "pk_get",
               "async_orm", "sa_aiosqlite", ">=", 2.5),
        Target("sqlite-insert", "SQLite insert+commit vs SA+aiosqlite", "sqlite",
               "insert_commit", "async_orm", "sa_aiosqlite", ">=", 2.0),
        Target("sqlite-bulk-peer", "SQLite bulk 1,000 vs SA+aiosqlite", "sqlite",
               "bulk_insert", "async_orm", "sa_aiosqlite", ">=", 5.0),
        Target("sqlite-bulk-sync", "SQLite bulk 1,000 vs sync Session", "sqlite",
               "bulk_insert", "async_orm", "sync", ">=", 0.95),
        Target("sqlite-select-sync", "SQLite select 10,000 vs sync Session", "sqlite",
               "select_many", "async_orm", "sync", ">=", 0.95),
    ]  # fmt: skip
    for n in (100, 1000):
        case = f"concurrent/N={n}"
        out += [
            Target(f"pg-conc-{n}", f"PG N={n} throughput vs SA+psycopg async", "postgresql",
                   case, "async_orm", "sa_psycopg", ">=", 1.05),
            Target(f"pg-conc-{n}-errors", f"PG N={n} errors (async_orm)", "postgresql",
                   case, "async_orm", None, "<=", 0, "errors"),
            Target(f"pg-conc-{n}-threads", f"PG N={n} peak OS threads <= pool + 2",
                   "postgresql", case, "async_orm", None, "<=", cap + 2, "peak_threads"),
        ]  # fmt: skip
    out += [
        Target("pg-get", "PG single-task pk get vs SA+psycopg async", "postgresql",
               "pk_get", "async_orm", "sa_psycopg", ">=", 0.9),
        Target("hop", "hop cost vs asyncio.to_thread (lower is better)", None, "hop",
               "async_orm", "to_thread", "<=", 0.8),
        Target("hops", "thread hops per web request", None, "hops_per_request",
               "async_orm", None, "<=", 3),
        Target("stream-sync", "stream throughput vs sync Session", None, "stream",
               "async_orm", "sync", ">=", 0.9),
        Target("stream-mem", "stream peak memory growth (MB)", None, "stream",
               "async_orm", None, "<", 50, "peak_growth_mb"),
    ]  # fmt: skip
    return out


def _cmp(value: float, op: str, threshold: float) -> bool:
    if op == ">=":
        return value >= threshold
    if op == "<=":
        return value <= threshold
    return value < threshold


def evaluate(records: list[Json], summary: Json, meta: Json) -> list[Json]:
    backend = meta.get("backend")
    out: list[Json] = []
    for t in targets(meta):
        row: Json = {**asdict(t), "measured": None, "status": "n/a", "note": ""}
        if t.backend is not None and t.backend != backend:
            row["note"] = f"needs a {t.backend} run"
            out.append(row)
            continue
        entries = summary.get(t.case, {})
        if t.a not in entries or (t.b is not None and t.b not in entries):
            missing = [n for n in (t.a, t.b) if n is not None and n not in entries]
            row["note"] = f"not measured ({', '.join(missing)})"
            out.append(row)
            continue
        value: float | None
        if t.b is not None:
            value = paired_ratio(records, t.case, t.a, t.b)
        elif t.metric == "value":
            value = entries[t.a].get("max")
        else:
            value = entries[t.a]["extras"].get(t.metric)
        if value is None:
            row["note"] = "no result"
            out.append(row)
            continue
        row["measured"] = value
        met = _cmp(value, t.op, t.threshold)
        row["status"] = "met" if met else "missed"
        if not met:
            if t.threshold:
                off = abs(value - t.threshold) / t.threshold * 100
                # below 1%, whole percents would print "missed by 0%"
                row["note"] = f"missed by {off:.0f}%" if off >= 1 else f"missed by {off:.1f}%"
            else:
                row["note"] = f"missed: {value:g}"
        a = entries[t.a]
        if a["extras"].get("stalled"):
            row["note"] = (row["note"] + "; stalled").strip("; ")
        size_note = _size_note(t, a)
        if size_note:
            row["note"] = (row["note"] + "; " + size_note).strip("; ")
        out.append(row)
    return out


def _size_note(t: Target, entry: Json) -> str:
    """Targets are stated for the full sizes; say so when a run used others."""
    if t.case == "stream" and entry.get("size") != 1_000_000:
        return f"at {entry.get('size', 0):,} rows (target is for 1,000,000)"
    if t.case == "bulk_insert" and entry.get("size") != 1000:
        return f"at {entry.get('size', 0):,} rows (target is for 1,000)"
    if t.case == "select_many" and entry.get("size") != 10_000:
        return f"at {entry.get('size', 0):,} rows (target is for 10,000)"
    return ""


# --------------------------------------------------------------------------- text output


def _fmt(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100 or (digits == 0 and abs(v) >= 10):
        return f"{v:,.0f}"
    return f"{v:,.{max(digits, 2)}f}"


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def table(data: Json) -> str:
    """The whole run as plain text: one block per case, then the targets."""
    meta, summary, records = data["meta"], data["summary"], data["records"]
    lines: list[str] = []
    pinned = pinned_to(meta)
    lines.append(
        f"async_orm bench: {meta.get('backend')} ({meta.get('url')}), "
        f"{meta.get('repeats')} repeat(s)"
        + (
            f" ({meta['heavy_repeats']} for stream and concurrent)"
            if meta.get("heavy_repeats", meta.get("repeats")) != meta.get("repeats")
            else ""
        )
        + f", preset {meta.get('preset')}"
        + (f", {pinned}" if pinned else "")
        + (f", SQLite journal {meta['sqlite_journal']}" if meta.get("sqlite_journal") else "")
    )
    lines.append(
        f"machine: {meta.get('cpu')}, {meta.get('cores')} cores; python {meta.get('python')}; "
        f"SQLAlchemy {meta.get('versions', {}).get('sqlalchemy')}; "
        f"load avg {meta.get('loadavg_start')} -> {meta.get('loadavg_end')}"
    )
    baseline = meta.get("baseline")
    if baseline:
        lines.append(
            f"async_orm (--baseline tree): {baseline['tree']} "
            f"(revision {baseline.get('revision') or 'unknown'})"
        )
    for note in meta.get("skipped", []):
        lines.append(f"skipped {note['contestant']}: {note['reason']}")
    for case_key, entries in summary.items():
        first = next(iter(entries.values()))
        lines.append("")
        lines.append(f"== {case_key}: {describe(first['workload'], first['size'], meta)}")
        is_conc = first["workload"] == "concurrent"
        is_stream = first["workload"] == "stream"
        head = f"  {'contestant':<36}{'median':>12} {'unit':<12}{'spread':>10}{'vs sync':>9}"
        head += f"{'async_orm is':>13}"
        if is_conc:
            head += f"{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'threads':>8}{'RSS MB':>8}"
        if is_stream:
            head += f"{'peak +MB':>9}"
        lines.append(head)
        for name, e in entries.items():
            label = hop_label(name, first["workload"])
            if "median" not in e:
                why = (e["errors"] or e["skipped"] or ["no result"])[0].splitlines()[0]
                lines.append(f"  {label:<36}{'-':>12} {why[:90]}")
                continue
            med = e["median"]
            # half of max - min, in % of the median; one value has no spread to show
            if len(e["values"]) == 1:
                spread = "1 repeat"
            elif med:
                spread = f"±{(e['max'] - e['min']) / med * 50:.0f}%"
            else:
                spread = "-"
            vs_sync = None
            if name != "sync" and first["workload"] not in ("hop", "hops_per_request"):
                vs_sync = paired_ratio(records, case_key, name, "sync")
            ao = None
            if name != "async_orm":
                ao = paired_ratio(records, case_key, "async_orm", name)
                if ao is not None and not e.get("higher_is_better", True):
                    ao = 1 / ao if ao else None
            row = (
                f"  {label:<36}{_fmt(med, 2):>12} {e['unit']:<12}"
                f"{spread:>10}{_ratio(vs_sync):>9}"
                f"{_ratio(ao):>13}"
            )
            x = e["extras"]
            if is_conc:
                row += (
                    f"{_fmt(x.get('p50_ms'), 2):>9}{_fmt(x.get('p99_ms'), 2):>9}"
                    f"{x.get('errors', 0):>8}{x.get('peak_threads', '-'):>8}"
                    f"{_fmt(x.get('peak_rss_mb')):>8}"
                )
                if x.get("stalled"):
                    row += f"  STALLED ({x.get('incomplete', 0)} unfinished at deadline)"
            if is_stream:
                row += f"{_fmt(x.get('peak_growth_mb'), 1):>9}"
            if "steps" in x:
                row += "  " + ", ".join(f"{k} {v:g}" for k, v in x["steps"].items())
            lines.append(row)
    lines.append("")
    lines.append("== targets; ratios are medians of per-repeat pairs")
    for t in data["targets"]:
        op = t["op"]
        thr = t["threshold"]
        meas = t["measured"]
        shown = "-" if meas is None else (f"{meas:.2f}" if t["b"] or meas % 1 else f"{meas:g}")
        if t["b"] is not None and meas is not None:
            shown += "x"
        lines.append(
            f"  {t['status']:<7}{t['text']:<48}{shown:>10}  (target {op} {thr:g})  {t['note']}"
        )
    return "\n".join(lines)


def write_json(data: Json, path: str) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=False, default=str)
        f.write("\n")


def read_json(path: str) -> Json:
    with open(path) as f:
        data: Json = json.load(f)
    return data


def targets_rst(runs: list[Json]) -> str:
    """The targets of several runs (one per database) as an RST list-table, for the docs."""
    rows: list[tuple[str, str, str, str, str]] = []
    for data in runs:
        meta = data["meta"]
        for t in data["targets"]:
            if t["status"] == "n/a" and t["backend"] is not None:
                continue  # belongs to the other database's run
            meas = t["measured"]
            if meas is None:
                shown = "-"
            elif t["b"] is not None:
                shown = f"{meas:.2f}x"
            elif t["metric"] == "peak_growth_mb":
                shown = f"{meas:.1f} MB"
            else:
                shown = f"{meas:g}"
            note = str(t["note"])
            if t["status"] == "missed":
                head, _, rest = note.partition("; ")
                status = f"**{head}**" + (f"; {rest}" if rest else "")
            else:
                status = str(t["status"]) + (f" ({note})" if note else "")
            where = ", ".join(filter(None, (str(meta["backend"]), pinned_to(meta))))
            rows.append((t["text"], where, shown, f"{t['op']} {t['threshold']:g}",
                         status))  # fmt: skip
    out = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 38 12 10 10 30",
        "",
        "   * - target",
        "     - database",
        "     - measured",
        "     - target",
        "     - status",
    ]
    for text, backend, shown, target, status in rows:
        out += [f"   * - {text}", f"     - {backend}", f"     - {shown}", f"     - {target}",
                f"     - {status}"]  # fmt: skip
    return "\n".join(out) + "\n"
