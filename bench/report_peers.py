"""The peer comparison and the cost of one idempotent send: docs tables, headline, chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

PEER_LABELS = {
    "igbutton_client": "igbutton AsyncClient (request_id)",
    "igbutton_sync": "igbutton Client, thread pool (request_id)",
    "peer_fbmessenger": "fbmessenger 6.0.0, thread pool",
    "peer_pymessenger": "pymessenger 0.0.7, thread pool",
    "peer_aiohttp": "direct aiohttp (asyncio)",
}
PEER_ORDER = tuple(PEER_LABELS)


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _ordered(table: dict[str, Any]) -> list[str]:
    return [t for t in PEER_ORDER if t in table] + [t for t in table if t not in PEER_ORDER]


def peer_table(results: dict[str, Any]) -> list[str]:
    """Sends/s, p50/p99 and CPU per send of igbutton's clients and the peer libraries."""
    send = results.get("send", {})
    table = send.get("peer_summary", {}).get("per_send", {})
    if not table:
        return []
    callers = send.get("peer_concurrency")
    lines = [
        f"### Peers: {callers} callers (threads for the blocking libraries, tasks for asyncio)",
        "",
        (
            "Every library sends the same button template to the same kind of Graph stand-in "
            "(the sandbox, its own process); igbutton's rows go through igbutton (its own "
            "process) to it. *Server CPU* is igbutton's process for igbutton's rows; the "
            "sandbox's CPU is in its own column."
        ),
        "",
        (
            "| library | sends/s | p50 ms | p99 ms | caller CPU µs/send | igbutton CPU µs/send "
            "| sandbox CPU µs/send | SQLite commits/send | errors |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for target in _ordered(table):
        row = table[target]
        igb = target.startswith("igbutton")
        sandbox = row["sandbox_cpu_us"] if igb else row["server_cpu_us"]
        lines.append(
            f"| {PEER_LABELS.get(target, target)} | {_fmt(row['calls_per_s'], 0)} "
            f"| {_fmt(row['p50_ms'], 2)} | {_fmt(row['p99_ms'], 2)} | {_fmt(row['caller_cpu_us'])} "
            f"| {_fmt(row['server_cpu_us']) if igb else '–'} | {_fmt(sandbox)} "
            f"| {_fmt(row['commits_per_send'], 3) if igb else '–'} | {row['errors']} |"
        )
    versus = send.get("peer_summary", {}).get("igbutton_client_vs_fbmessenger", {})
    if versus:
        lines += [
            "",
            (
                "igbutton's AsyncClient against fbmessenger, same callers: sends/s "
                f"**{_fmt(versus.get('throughput'), 2)} x**, "
                f"p99 **{_fmt(versus.get('p99'), 2)} x**, "
                f"caller CPU per send **{_fmt(versus.get('caller_cpu'), 2)} x**."
            ),
        ]
    for target, reason in send.get("skipped", {}).items():
        if target in PEER_LABELS:
            lines.append(f"\n{PEER_LABELS[target]}: not run ({reason.strip()[:200]}).")
    return lines


def cost_table(results: dict[str, Any]) -> list[str]:
    """What a request_id costs: idempotent against plain sends, same server, each level."""
    rows = results.get("send", {}).get("idempotent_cost", [])
    if not rows:
        return []
    lines = [
        "### What one idempotent send costs",
        "",
        (
            "| callers | sends/s idempotent / plain (ratio) | igbutton CPU µs/send idempotent / "
            "plain (added) | caller CPU µs/send idempotent / plain | SQLite commits/send |"
        ),
        "|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        mine, base = row["idempotent"], row.get("plain") or {}
        lines.append(
            f"| {row['concurrency']} | {_fmt(mine['calls_per_s'], 0)} / "
            f"{_fmt(base.get('calls_per_s'), 0)} ({_fmt(row.get('throughput_ratio'), 2)}) "
            f"| {_fmt(mine['server_cpu_us'], 0)} / {_fmt(base.get('server_cpu_us'), 0)} "
            f"({_fmt(row.get('server_cpu_us_added'), 0)}) "
            f"| {_fmt(mine['caller_cpu_us'], 0)} / {_fmt(base.get('caller_cpu_us'), 0)} "
            f"| {_fmt(mine['commits_per_send'], 3)} |"
        )
    return lines


def headline(results: dict[str, Any]) -> list[str]:
    """The first lines of the page: the measured path and the cost of an idempotent send."""
    rows = results.get("send", {}).get("idempotent_cost", [])
    meta = results.get("meta", {})
    lines = [
        (
            "**Measured path: igbutton called through its own Python client (`AsyncClient`) "
            "with its defaults, so every send carries a `request_id` and is idempotent** "
            "(claimed durably in the SQLite store before Graph is called, its outcome stored "
            "while the caller is answered). That is what users run (every igbutton client "
            "sets a `request_id`, as AIP-155 and the README recommend), so it is the figure "
            "that says what igbutton costs; the plain raw-stub send without `request_id` is "
            "shown beside it, and both against the gRPC and HTTP ceilings and the Python "
            "libraries a team would use instead."
        ),
    ]
    if rows:
        parts = []
        for row in rows:
            mine = row["idempotent"]
            added = row.get("server_cpu_us_added")
            parts.append(
                f"at {row['concurrency']} caller(s) {_fmt(mine['server_cpu_us'], 0)} µs of "
                f"igbutton CPU ({'+' if (added or 0) >= 0 else ''}{_fmt(added, 0)} µs over a plain "
                f"send), {_fmt(mine['caller_cpu_us'], 0)} µs in the caller and "
                f"{_fmt(mine['commits_per_send'], 2)} SQLite commits (fsyncs)"
            )
        lines += [
            "",
            (
                f"One idempotent send costs (run `{meta.get('label')}`, {meta.get('started_at')}): "
                + "; ".join(parts)
                + ". Commits are the SQLite writer's `commits` counter read from igbutton's "
                "`/metrics` before and after each window (a bench-only hook in "
                "`bench/serve_igbutton.py`); each commit is one WAL fsync, and concurrent "
                "claims and completions share one (group commit)."
            ),
        ]
    lines += _store_cost_lines(results)
    measured = [t for t in results.get("targets", []) if t.get("value") is not None]
    if measured:
        lines += [
            "",
            "Targets in this run: "
            + "; ".join(
                f"{t['name']} {t['value']:g} {t['unit']} ({t['comparison']} {t['limit']:g}, "
                f"{'PASS' if t['pass'] else 'MISS'})"
                for t in measured
            )
            + ".",
        ]
    if results.get("send", {}).get("peer_runs"):
        lines += [
            "",
            (
                "![igbutton and the peer libraries, same run](../bench/results/"
                f"{meta.get('label', 'default')}-peers.png)"
            ),
        ]
    return lines


def _store_cost_lines(results: dict[str, Any]) -> list[str]:
    """The idempotency store's own share of a send (bench.idempotency_cost), per backend."""
    parts = []
    for backend, cost in results.get("send", {}).get("store_cost", {}).items():
        for row in cost.get("rows", []):
            writes = (
                f"{_fmt(row['commits_per_send'], 3)} SQLite commits (fsyncs)"
                if "commits_per_send" in row
                else f"{_fmt(row.get('nats_server_cpu_us_per_send'), 0)} µs of nats-server CPU"
            )
            parts.append(
                f"{backend} at {row['concurrency']} caller(s): {_fmt(row['cpu_us_per_send'], 0)} "
                f"µs of CPU and {writes} per send"
            )
    if not parts:
        return []
    return [
        "",
        (
            "The idempotency store's share of one send (`python -m bench.idempotency_cost`: "
            "igbutton's own `IdempotentSends` on the real store, the Graph call answered at "
            "once, so no gRPC or HTTP around it): " + "; ".join(parts) + "."
        ),
    ]


def chart(results: dict[str, Any], path: Path) -> None:
    """Sends/s, p50/p99 and caller CPU per send of every peer, side by side."""
    table = results.get("send", {}).get("peer_summary", {}).get("per_send", {})
    fig, (ax_rate, ax_lat, ax_cpu) = plt.subplots(1, 3, figsize=(15, 4.8))
    names = _ordered(table)
    labels = [PEER_LABELS.get(n, n).replace(", ", "\n", 1) for n in names]
    xs = list(range(len(names)))
    colors = ["tab:blue" if n.startswith("igbutton") else "tab:gray" for n in names]
    if names:
        ax_rate.bar(xs, [table[n]["calls_per_s"] for n in names], color=colors)
        ax_lat.bar(
            [x - 0.2 for x in xs], [table[n]["p50_ms"] or 0 for n in names], 0.4, label="p50"
        )
        ax_lat.bar(
            [x + 0.2 for x in xs], [table[n]["p99_ms"] or 0 for n in names], 0.4, label="p99"
        )
        ax_lat.legend(fontsize=7)
        ax_cpu.bar(xs, [table[n]["caller_cpu_us"] or 0 for n in names], color=colors)
    callers = results.get("send", {}).get("peer_concurrency")
    ax_rate.set(title=f"Sends/s at {callers} callers", ylabel="sends/s")
    ax_lat.set(title="Latency", ylabel="ms")
    ax_cpu.set(title="Caller CPU per send", ylabel="µs")
    for ax in (ax_rate, ax_lat, ax_cpu):
        ax.set_xticks(xs, labels, fontsize=6, rotation=30, ha="right")
        ax.grid(True, axis="y", alpha=0.3)
    meta = results.get("meta", {})
    fig.suptitle(
        f"igbutton and peer libraries, bench '{meta.get('label')}' ({meta.get('plan')}) "
        f"{meta.get('started_at', '')}, load avg at start {meta.get('loadavg_start')}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
