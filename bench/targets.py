"""The issue's performance targets, checked against one benchmark's results."""

from __future__ import annotations

from typing import Any

from bench.stats import ratio

SEND_RATIO_MIN = 0.5
IDEMPOTENT_VS_PLAIN_MIN = 0.9
VS_FBMESSENGER_THROUGHPUT_MIN = 1.5
VS_FBMESSENGER_P99_MAX = 0.5
VS_FBMESSENGER_CALLER_CPU_MAX = 0.4
ADDED_P50_MAX_MS = 1.0
STORED_PER_S_MIN = 2000.0
E2E_P99_MAX_MS = 50.0
E2E_CASE = "subs10-b1-r500"
NATS_MAX_B1_E2E_P50_MAX_MS = 50.0
MEMORY_GROWTH_MAX_MB = 10.0
MEMORY_EVENTS = 100_000


def _target(
    name: str, description: str, value: float | None, limit: float, unit: str, *, at_least: bool
) -> dict[str, Any]:
    passed = None if value is None else value >= limit if at_least else value <= limit
    return {
        "name": name,
        "description": description,
        "value": value,
        "limit": limit,
        "unit": unit,
        "comparison": ">=" if at_least else "<=",
        "pass": passed,
    }


def check(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target with its measured value and PASS (True), MISS (False) or None (N/A)."""
    send = results.get("send", {}).get("summary", {})
    best = send.get("best_calls_per_s", {})
    added = send.get("added_latency_c1", {}).get("igbutton_client", {})
    peers = (
        results.get("send", {}).get("peer_summary", {}).get("igbutton_client_vs_fbmessenger", {})
    )
    callers = results.get("send", {}).get("peer_concurrency")
    sqlite = results.get("postbacks", {}).get("sqlite", {})
    stored = {t["batch"]: t["events_per_s"] for t in sqlite.get("throughput", [])}
    e2e = next((c for c in sqlite.get("cases", []) if c.get("case") == E2E_CASE), None)
    memory = sqlite.get("memory", {})
    full_memory = memory.get("events", 0) >= MEMORY_EVENTS
    nats = results.get("postbacks", {}).get("nats", {})
    nats_b1 = next((t for t in nats.get("throughput", []) if t.get("batch") == 1), None)
    return [
        _target(
            "send_throughput_ratio",
            "igbutton through its AsyncClient (request_id) calls/s, best concurrency / bare "
            "grpc.aio ceiling, same run",
            ratio(best.get("igbutton_client"), best.get("grpc_ceiling")),
            SEND_RATIO_MIN,
            "x",
            at_least=True,
        ),
        _target(
            "idempotent_vs_plain",
            "idempotent sends through the AsyncClient (request_id) / plain raw-stub sends "
            "(none), best concurrency of each, same server",
            send.get("idempotent_vs_plain"),
            IDEMPOTENT_VS_PLAIN_MIN,
            "x",
            at_least=True,
        ),
        _target(
            "added_p50_latency",
            "igbutton through its AsyncClient (request_id) p50 minus a direct POST's p50 at "
            "1 caller",
            added.get("p50_ms"),
            ADDED_P50_MAX_MS,
            "ms",
            at_least=False,
        ),
        _target(
            "vs_fbmessenger_throughput",
            f"igbutton AsyncClient sends/s / fbmessenger's on a {callers}-thread pool",
            peers.get("throughput"),
            VS_FBMESSENGER_THROUGHPUT_MIN,
            "x",
            at_least=True,
        ),
        _target(
            "vs_fbmessenger_p99",
            f"igbutton AsyncClient p99 / fbmessenger's on a {callers}-thread pool",
            peers.get("p99"),
            VS_FBMESSENGER_P99_MAX,
            "x",
            at_least=False,
        ),
        _target(
            "vs_fbmessenger_caller_cpu",
            f"caller CPU per send: igbutton AsyncClient / fbmessenger on {callers} threads",
            peers.get("caller_cpu"),
            VS_FBMESSENGER_CALLER_CPU_MAX,
            "x",
            at_least=False,
        ),
        _target(
            "stored_postbacks_batch1",
            "postbacks stored durably per second on SQLite, deliveries of 1",
            stored.get(1),
            STORED_PER_S_MIN,
            "events/s",
            at_least=True,
        ),
        _target(
            "stored_postbacks_batch50",
            "postbacks stored durably per second on SQLite, deliveries of 50",
            stored.get(50),
            STORED_PER_S_MIN,
            "events/s",
            at_least=True,
        ),
        _target(
            "e2e_p99_500_per_s_10_subscribers",
            "end-to-end p99, POST to subscriber, 500 postbacks/s, 10 subscribers (SQLite)",
            e2e["subscribers"]["latency"]["p99_ms"] if e2e else None,
            E2E_P99_MAX_MS,
            "ms",
            at_least=False,
        ),
        _target(
            "nats_max_b1_e2e_p50",
            "end-to-end p50, POST to subscriber, max-b1 (16 posters back to back, deliveries "
            "of 1, one subscriber) on NATS",
            nats_b1["subscribers"]["latency"]["p50_ms"] if nats_b1 else None,
            NATS_MAX_B1_E2E_P50_MAX_MS,
            "ms",
            at_least=False,
        ),
        _target(
            "idle_subscriber_memory_growth",
            f"server RSS growth while {MEMORY_EVENTS:,} events pass a subscriber that reads "
            "nothing (SQLite)",
            memory.get("growth_mb") if full_memory else None,
            MEMORY_GROWTH_MAX_MB,
            "MB",
            at_least=False,
        ),
    ]


def describe(target: dict[str, Any]) -> str:
    """One PASS/MISS/N/A line for the terminal."""
    verdict = {True: "PASS", False: "MISS", None: "N/A "}[target["pass"]]
    value = "not measured" if target["value"] is None else f"{target['value']:g} {target['unit']}"
    return (
        f"{verdict}  {target['name']}: {value} "
        f"(target {target['comparison']} {target['limit']:g} {target['unit']})"
    )
