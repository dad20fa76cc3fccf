"""Smoke test of the benchmark suite: it runs and reports; nothing here asserts a time."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from async_orm_bench import cli, main
from async_orm_bench.contestants import Contestant, unavailable_reason
from async_orm_bench.measure import WORKLOADS
from async_orm_bench.report import evaluate, targets_rst

TINY = [
    "--quick",
    "--quiet",
    "--scale",
    "0.2",
    "--rows",
    "200",
    "--select-rows",
    "50",
    "--bulk-size",
    "20",
    "--stream-rows",
    "500",
    "--concurrency",
    "1,3",
    "--requests",
    "6",
]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict, str, Path]:
    """One tiny run shared by the tests below: (exit code, JSON, stdout, its directory)."""
    tmp = tmp_path_factory.mktemp("bench")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main([*TINY, "--url", f"sqlite:///{tmp / 'bench.db'}", "--json", str(tmp / "b.json")])
    return rc, json.loads((tmp / "b.json").read_text()), printed.getvalue(), tmp


def test_quick_bench_reports_every_async_orm_workload(bench_run) -> None:
    rc, data, printed, _ = bench_run
    assert rc == 0, [r["error"] for r in data["records"] if r["error"]]
    summary = data["summary"]
    expected = [w for w in WORKLOADS if w != "concurrent"] + ["concurrent/N=1", "concurrent/N=3"]
    for case in expected:
        entry = summary[case]["async_orm"]
        assert entry["values"], (case, entry)
        assert "median" in entry
    hops = summary["hops_per_request"]["async_orm"]["extras"]["steps"]
    assert set(hops) == {"open", "get", "update", "commit", "close"}
    conc = summary["concurrent/N=3"]["async_orm"]["extras"]
    assert {"p50_ms", "p99_ms", "errors", "peak_threads", "peak_rss_mb"} <= set(conc)
    assert "peak_growth_mb" in summary["stream"]["async_orm"]["extras"]
    assert {t["id"] for t in data["targets"]} >= {"sqlite-get", "hop", "hops", "stream-mem"}
    assert "== pk_get" in printed
    assert "== targets; ratios are medians of per-repeat pairs" in printed
    assert "issue" not in printed


def test_a_single_repeat_is_not_shown_with_a_spread(bench_run) -> None:
    printed = bench_run[2]
    assert "  async_orm  " in printed
    assert "1 repeat" in printed
    assert "±" not in printed  # one value: no spread measured, none printed


def test_save_rerenders_a_run_into_the_results_folder(bench_run, tmp_path, monkeypatch) -> None:
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(cli, "RESULTS", tmp_path)  # instead of the checkout's benchmarks/results
    assert main(["--save", "--report", str(bench_run[3] / "b.json")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "sqlite-concurrency.png",
        "sqlite-hops-memory.png",
        "sqlite-throughput.png",
        "sqlite.txt",
        "targets.inc",
    ]
    txt = (tmp_path / "sqlite.txt").read_text()
    assert txt.startswith("async_orm bench: sqlite") and "wrote " not in txt
    # targets.inc is made of the saved runs' JSON, and this re-render saved none
    assert (tmp_path / "targets.inc").read_text() == "(no results yet)\n"


def test_report_rerenders_a_saved_run_with_plots(bench_run, tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    rc = main(["--report", str(bench_run[3] / "b.json"), "--plots", str(tmp_path / "png")])
    assert rc == 0
    assert "== hop" in capsys.readouterr().out
    pngs = sorted(p.name for p in (tmp_path / "png").glob("*.png"))
    assert pngs == ["sqlite-concurrency.png", "sqlite-hops-memory.png", "sqlite-throughput.png"]


def test_pinned_run_has_plots_and_target_rows_of_its_own(bench_run, tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    data = json.loads((bench_run[3] / "b.json").read_text())
    data["meta"]["cpus"] = [0]  # as `--cpus 0` records it
    saved = tmp_path / "pinned.json"
    saved.write_text(json.dumps(data))
    rc = main(["--report", str(saved), "--plots", str(tmp_path / "png")])
    assert rc == 0
    assert ", pinned to CPU 0," in capsys.readouterr().out
    pngs = sorted(p.name for p in (tmp_path / "png").glob("*.png"))
    assert pngs == [
        "sqlite-1cpu-concurrency.png",
        "sqlite-1cpu-hops-memory.png",
        "sqlite-1cpu-throughput.png",
    ]
    assert "- sqlite, pinned to CPU 0" in targets_rst([data])
    assert "- sqlite\n" in targets_rst([json.loads((bench_run[3] / "b.json").read_text())])


def test_a_miss_smaller_than_one_percent_is_not_reported_as_zero(bench_run) -> None:
    data = json.loads((bench_run[3] / "b.json").read_text())
    for rec in data["records"]:  # a hop 0.804x to_thread's cost in every repeat
        if rec["case"] == "hop" and rec["contestant"] in ("async_orm", "to_thread"):
            rec["result"]["value"] = 80.4 if rec["contestant"] == "async_orm" else 100.0
    rows = evaluate(data["records"], data["summary"], data["meta"])
    (hop,) = [row for row in rows if row["id"] == "hop"]
    assert hop["status"] == "missed"
    assert hop["note"] == "missed by 0.5%"


def test_contestant_with_missing_package_is_skipped_with_install_hint() -> None:
    ghost = Contestant(
        "ghost", "ghost", "async_api", frozenset(), ("no_such_module_xyz",), "pip install ghost"
    )
    assert unavailable_reason(ghost, "sqlite") == "needs no_such_module_xyz: pip install ghost"


def test_baseline_tree_runs_side_by_side_with_the_installed_async_orm(tmp_path: Path) -> None:
    import async_orm

    tree = tmp_path / "base"
    tree.mkdir()
    (tree / "async_orm").symlink_to(Path(async_orm.__file__).parent)  # another path, same code
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main(
            [*TINY, "--workloads", "hop", "--contestants", "async_orm", "--baseline", str(tree),
             "--url", f"sqlite:///{tmp_path / 'bench.db'}", "--json", str(tmp_path / "b.json")]
        )  # fmt: skip
    data = json.loads((tmp_path / "b.json").read_text())
    assert rc == 0, [r["error"] for r in data["records"] if r["error"]]
    modules = {r["contestant"]: r["result"]["module"] for r in data["records"]}
    assert modules["async_orm_baseline"] == str(tree / "async_orm" / "__init__.py")
    assert modules["async_orm"] == async_orm.__file__
    assert data["meta"]["baseline"]["tree"] == str(tree)
    assert f"async_orm (--baseline tree): {tree}" in printed.getvalue()
    assert "median" in data["summary"]["hop"]["async_orm_baseline"]


def test_baseline_tree_without_async_orm_is_refused(tmp_path: Path, capsys) -> None:
    assert main(["--quick", "--baseline", str(tmp_path)]) == 2
    assert "no async_orm/__init__.py there" in capsys.readouterr().err


def test_in_memory_sqlite_is_refused(capsys) -> None:
    assert main(["--quick", "--url", "sqlite://"]) == 2
    assert "SQLite *file*" in capsys.readouterr().err


def test_trio_hop_command_measures_every_contestant(capsys) -> None:
    pytest.importorskip("trio")
    from async_orm_bench import trio_hop

    assert trio_hop.main(["--calls", "20", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    for name in (
        "async_orm under Trio",
        "trio.to_thread.run_sync",
        "async_orm under asyncio",
        "asyncio.to_thread",
    ):
        assert name in out
