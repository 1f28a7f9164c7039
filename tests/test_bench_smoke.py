"""`make bench` in its tiny plan: every process starts, talks and stops; the JSON has its keys.

Speed is never asserted here; only that the harness runs and writes what the docs read.
Needs the bench extra (psutil, matplotlib): skipped in an environment without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("psutil")
pytest.importorskip("matplotlib")
PEERS = ("igbutton_client", "igbutton_sync", "peer_fbmessenger", "peer_pymessenger", "peer_aiohttp")

REPO = Path(__file__).resolve().parent.parent
TARGETS = {
    "send_throughput_ratio",
    "idempotent_vs_plain",
    "added_p50_latency",
    "vs_fbmessenger_throughput",
    "vs_fbmessenger_p99",
    "vs_fbmessenger_caller_cpu",
    "stored_postbacks_batch1",
    "stored_postbacks_batch50",
    "e2e_p99_500_per_s_10_subscribers",
    "nats_max_b1_e2e_p50",
    "idle_subscriber_memory_growth",
}


@pytest.mark.slow
def test_tiny_bench_writes_results_and_chart(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IGBUTTON_", "BENCH_"))}
    results = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--plan=tiny",
            "--backends=sqlite",
            f"--results-dir={results}",
            f"--work-dir={tmp_path / 'work'}",
            "--no-docs",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((results / "tiny.json").read_text())
    assert data["send"]["failures"] == {}
    # The idempotency store's own cost per send, at one caller and at the peers' callers.
    store_rows = data["send"]["store_cost"]["sqlite"]["rows"]
    assert [row["concurrency"] for row in store_rows] == [1, 4]
    assert all(row["commits_per_send"] > 0 for row in store_rows)
    assert {"meta", "send", "postbacks", "targets"} <= set(data)
    assert data["meta"]["plan"] == "tiny"
    # Steal time: what the hypervisor took from this VM over the run (None off Linux).
    steal = data["meta"]["steal_percent"]
    assert steal is None or 0 <= steal <= 100
    assert {t["name"] for t in data["targets"]} == TARGETS
    assert all(t["pass"] in (True, False, None) for t in data["targets"])
    assert "PASS" in proc.stdout or "MISS" in proc.stdout or "N/A" in proc.stdout

    ceiling = [r for r in data["send"]["runs"] if r["target"] == "grpc_ceiling"]
    assert len(ceiling) == 1
    run = ceiling[0]
    assert run["calls"] > 0
    assert run["errors"] == {}
    assert {"p50_ms", "p90_ms", "p99_ms"} <= set(run["latency"])
    assert {"cpu_seconds", "peak_rss_mb"} <= set(run["usage"]["server"])
    assert run["usage"]["server"]["peak_rss_mb"] > 0
    window_steal = run["usage"]["machine"]["steal_percent_of_all_cores"]
    assert window_steal is None or window_steal >= 0
    for target in ("http_ceiling", "igbutton", "igbutton_client"):
        ran = [r for r in data["send"]["runs"] if r["target"] == target]
        assert ran or target in data["send"]["skipped"]
    assert {"best_calls_per_s", "added_latency_c1", "per_concurrency"} <= set(
        data["send"]["summary"]
    )
    # Every peer runner sent (the tiny plan runs them at a few callers) and was measured.
    peers = {r["target"]: r for r in data["send"]["peer_runs"]}
    for target in PEERS:
        assert target in peers, data["send"]["skipped"]
        assert peers[target]["calls"] > 0
        assert peers[target]["errors"] == {}, peers[target]["first_error"]
        assert peers[target]["usage"]["caller"]["cpu_seconds"] > 0
    # Idempotent sends commit to SQLite (the commits hook works); plain ones do not.
    cost = data["send"]["idempotent_cost"][0]
    assert cost["idempotent"]["commits_per_send"] > 0
    assert cost["plain"]["commits_per_send"] == 0
    assert (results / "tiny-peers.png").stat().st_size > 0
    sqlite = data["postbacks"]["sqlite"]
    assert sqlite["failed"] == {}
    assert "skipped" in sqlite or {"throughput", "cases", "memory"} <= set(sqlite)
    assert (results / "tiny.png").stat().st_size > 0


def _run(calls: int, errors: dict[str, int], first_error: str | None = None) -> dict[str, object]:
    return {"calls": calls, "errors": errors, "first_error": first_error}


def test_a_run_without_calls_or_with_errors_fails_the_bench() -> None:
    from bench.__main__ import failures
    from bench.send_bench import measured_nothing

    assert measured_nothing(_run(10, {})) is None
    assert measured_nothing(_run(0, {})) == "no call completed in the measured window"
    # A client that retried until past the window: no error counted, but one was seen.
    assert measured_nothing(_run(0, {}, "UNAVAILABLE: store")) is not None
    assert measured_nothing(_run(10, {"UNAVAILABLE": 1}, "UNAVAILABLE: x")) is not None
    results = {
        "send": {"failures": {"igbutton_client@1#0": "no call"}},
        "postbacks": {"nats": {"failed": {"max-b1": "exited"}}, "sqlite": {"failed": {}}},
    }
    assert failures(results) == {
        "send igbutton_client@1#0": "no call",
        "postbacks nats max-b1": "exited",
    }
    assert failures({"send": {"failures": {}}}) == {}


def test_a_run_with_steal_time_says_so_above_its_tables() -> None:
    from bench.report import STEAL_WARNING_PERCENT, summary_markdown

    meta = {
        "label": "x",
        "plan": "full",
        "started_at": "2026-12-03 06:01 UTC",
        "commit": "abc1234",
        "cpu_count": 2,
        "cpu_model": "a VM",
        "loadavg_start": "0.10, 0.10, 0.10",
    }
    stolen = summary_markdown({"meta": {**meta, "steal_percent": 12.3}}, [])
    assert "steal time 12.3 % over the run" in stolen
    assert "The hypervisor took 12.3 % of this VM's CPU time" in stolen
    quiet = summary_markdown({"meta": {**meta, "steal_percent": STEAL_WARNING_PERCENT}}, [])
    assert "The hypervisor took" not in quiet
    window = {
        "target": "grpc_ceiling",
        "concurrency": 1,
        "calls_per_s": 900.0,
        "latency": {"p50_ms": 1.0, "p90_ms": 1.2, "p99_ms": 2.0},
        "usage": {
            "server": {"cpu_percent": 50.0, "cpu_seconds": 2.0, "peak_rss_mb": 40.0},
            "caller": {"cpu_seconds": 1.0},
            "machine": {"cpu_seconds": 4.0, "busy_percent_of_all_cores": 55.4,
                        "steal_percent_of_all_cores": 24.3},
        },
        "calls": 3600,
    }  # fmt: skip
    table = summary_markdown({"meta": meta, "send": {"runs": [window]}}, [])
    assert "| 55 (24) |" in table  # the window's busy share, and the share stolen from it
    unknown = summary_markdown({"meta": meta}, [])  # results written before steal was measured
    assert "steal time" not in unknown
    assert "The hypervisor took" not in unknown


@pytest.mark.slow
def test_send_profile_splits_an_idempotent_sends_cost_by_thread(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IGBUTTON_", "BENCH_"))}
    out = tmp_path / "windows.json"
    subprocess.run(
        [sys.executable, "-m", "bench.send_profile", "--rounds=1", "--duration=1",
         "--warmup=0.3", "--concurrency=4", f"--json={out}"],
        cwd=REPO, env=env, check=True, timeout=240,
    )  # fmt: skip
    windows = {w["mode"]: w for w in json.loads(out.read_text())}
    assert set(windows) == {"client", "grpc"}
    for window in windows.values():
        assert window["sends_per_s"] > 0
        assert window["cpu_us"] > 0
    # Only the idempotent sends (request_id) commit to SQLite.
    assert windows["client"]["commits"] > 0
    assert windows["grpc"]["commits"] == 0


@pytest.mark.slow
def test_append_cost_counts_the_writers_statements_per_delivery() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IGBUTTON_", "BENCH_"))}
    done = subprocess.run(
        [sys.executable, "-m", "bench.append_cost", "--concurrency=8", "--deliveries=400",
         "--statements"],
        cwd=REPO, env=env, check=True, timeout=240, capture_output=True, text=True,
    )  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["deliveries_per_s"] > 0
    assert 0 < result["commits_per_delivery"] <= 1
    # A delivery alone in its batch: BEGIN, the append, the note, COMMIT. Together, each
    # kind is one statement for the batch (no savepoints): never more than that.
    assert result["statements_per_delivery"] <= 4
