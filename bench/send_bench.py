"""The send benchmark: igbutton against its gRPC and HTTP ceilings, at several concurrencies.

Targets (each server in its own process, the load generator in another):
- ``grpc_ceiling``: bare grpc.aio unary calls to a trivial servicer (bench.ceiling_grpc);
- ``http_ceiling``: aiohttp POSTs of the same Graph JSON straight to the sandbox;
- ``igbutton``: SendButtonTemplate through igbutton to the sandbox in its own process;
- ``igbutton_inproc``: the same with igbutton's in-process sandbox (``--sandbox``).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench import payloads, procs, servers
from bench.plan import Plan
from bench.procs import ChildFailed, Meter
from bench.servers import Running, ServerKnobs
from bench.stats import ratio
from igbutton.v1 import send_service_pb2_grpc


class Skip(Exception):
    """This target cannot run in this checkout (the reason is recorded)."""


def run_load(
    name: str, args: list[str], meters: dict[str, Meter], work: Path, duration: float
) -> dict[str, Any]:
    """Run one load generator; measure the servers between its start and end events.

    ``usage["machine"]`` is every core's use over the window, the load generator's and
    anything else running on the machine included: a check on how quiet the machine was.
    """
    child = procs.start(name, [procs.PYTHON, "-m", *args], work, pipes=True)
    machine = procs.MachineMeter()
    try:
        procs.expect_event(child, "start", timeout=120)
        machine.begin()
        for meter in meters.values():
            meter.begin()
        procs.expect_event(child, "end", timeout=duration + 120)
        usage = {role: meter.end() for role, meter in meters.items()}
        usage["machine"] = machine.end()
        result = procs.expect_event(child, "result", timeout=300)
    finally:
        child.stop()
    result.pop("event", None)
    result["usage"] = usage
    return result


def probe_send(target: str) -> None:
    """One SendButtonTemplate; Skip if this build has no send path or it fails."""
    with grpc.insecure_channel(target) as channel:
        stub = send_service_pb2_grpc.SendServiceStub(channel)
        try:
            stub.SendButtonTemplate(payloads.send_request(), timeout=20)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNIMPLEMENTED:
                raise Skip("SendService is not implemented in this build") from None
            raise Skip(f"probe send failed: {code.name}: {exc.details()}") from None


@dataclass
class Target:
    """A started send target: its processes and how to load and measure it."""

    name: str
    processes: list[Running]
    server: Running
    grpc: str | None = None
    http: str | None = None
    sandbox_url: str | None = None
    sandbox: Running | None = None
    channels: int = 1

    def stop(self) -> None:
        """Stop its processes, last started first."""
        for running in reversed(self.processes):
            running.stop()


def target_knobs(target: str, knobs: ServerKnobs) -> ServerKnobs:
    """The server knobs of an igbutton target: ``_uvloop``, ``_asyncio``, ``_workersN``."""
    for part in target.split("_")[1:]:
        if part in ("uvloop", "asyncio"):
            knobs = dataclasses.replace(knobs, uvloop=part == "uvloop")
        elif part.startswith("workers") and part[7:].isdigit():
            knobs = dataclasses.replace(knobs, workers=int(part[7:]))
    return knobs


def _start(target: str, work: Path, knobs: ServerKnobs) -> Target:
    if target == "grpc_ceiling":
        ceiling = servers.start_grpc_ceiling(work)
        return Target(target, [ceiling], ceiling, grpc=f"127.0.0.1:{ceiling.ports['grpc']}")
    if not servers.have_sandbox():
        raise Skip("no igbutton_server.sandbox in this build")
    if target == "http_ceiling":
        sandbox = servers.start_sandbox("sandbox-http", work)
        url = sandbox.ports["url"]
        return Target(target, [sandbox], sandbox, http=url + payloads.graph_path(), sandbox_url=url)
    if not target.startswith("igbutton"):
        raise ValueError(f"unknown send target {target!r}")
    mine = target_knobs(target, knobs)
    # More connections only where the kernel has several workers to spread them over.
    channels = 1 if mine.workers == 1 else 4 * mine.workers
    if "inproc" in target.split("_"):
        igb = servers.start_igbutton(target, work, mine, in_process_sandbox=True)
        started = Target(
            target,
            [igb],
            igb,
            grpc=f"127.0.0.1:{igb.ports['grpc']}",
            sandbox_url=f"http://127.0.0.1:{igb.ports['sandbox']}",
            channels=channels,
        )
    else:
        sandbox = servers.start_sandbox(f"sandbox-{target}", work)
        try:
            igb = servers.start_igbutton(target, work, mine, graph_url=sandbox.ports["url"])
        except BaseException:
            sandbox.stop()
            raise
        started = Target(
            target,
            [sandbox, igb],
            igb,
            grpc=f"127.0.0.1:{igb.ports['grpc']}",
            sandbox_url=sandbox.ports["url"],
            sandbox=sandbox,
            channels=channels,
        )
    try:
        assert started.grpc is not None
        probe_send(started.grpc)
    except BaseException:
        started.stop()
        raise
    return started


def _load(target: Target, concurrency: int, plan: Plan, work: Path) -> dict[str, Any]:
    if target.sandbox_url is not None:
        servers.reset_sandbox(target.sandbox_url)
    meters = {"server": Meter(target.server.child.pid)}
    if target.sandbox is not None:
        meters["sandbox"] = Meter(target.sandbox.child.pid)
    common = [
        f"--concurrency={concurrency}",
        f"--duration={plan.send_duration}",
        f"--warmup={plan.send_warmup}",
    ]
    if target.http is not None:
        args = ["bench.loadgen_send", "http", f"--url={target.http}", *common]
    else:
        args = [
            "bench.loadgen_send",
            "grpc",
            f"--target={target.grpc}",
            f"--channels={min(target.channels, concurrency)}",
            *common,
        ]
    result = run_load(f"load-{target.name}-c{concurrency}", args, meters, work, plan.send_duration)
    result["target"] = target.name
    _print_run(result)
    return result


def _print_run(run: dict[str, Any]) -> None:
    lat = run["latency"]
    server = run["usage"]["server"]
    errors = f" errors={run['errors']} ({run['first_error']})" if run["errors"] else ""
    print(
        f"  send {run['target']:<22} c={run['concurrency']:<3} {run['calls_per_s']:>9.1f} calls/s"
        f"  p50={lat['p50_ms']} p90={lat['p90_ms']} p99={lat['p99_ms']} ms"
        f"  server cpu={server['cpu_seconds']}s peak_rss={server['peak_rss_mb']}MB"
        f"  machine busy={run['usage']['machine']['busy_percent_of_all_cores']}%{errors}",
        flush=True,
    )


def _best(runs: list[dict[str, Any]], target: str) -> float | None:
    values = [r["calls_per_s"] for r in runs if r["target"] == target and r["calls"]]
    return max(values) if values else None


def _at(runs: list[dict[str, Any]], target: str, concurrency: int) -> dict[str, Any] | None:
    return next(
        (r for r in runs if r["target"] == target and r["concurrency"] == concurrency), None
    )


def summarise(
    runs: list[dict[str, Any]], concurrency: tuple[int, ...], targets: list[str]
) -> dict[str, Any]:
    """Ratios against the ceilings (per concurrency and best of each) and added latency."""
    igbuttons = [t for t in targets if t.startswith("igbutton")]
    per_concurrency = []
    for c in concurrency:
        row: dict[str, Any] = {"concurrency": c}
        ceiling = _at(runs, "grpc_ceiling", c)
        http = _at(runs, "http_ceiling", c)
        for target in igbuttons:
            run = _at(runs, target, c)
            if run is None:
                continue
            row[f"{target}_vs_grpc_ceiling"] = ratio(
                run["calls_per_s"], ceiling["calls_per_s"] if ceiling else None
            )
            row[f"{target}_vs_http_ceiling"] = ratio(
                run["calls_per_s"], http["calls_per_s"] if http else None
            )
        per_concurrency.append(row)
    best = {t: _best(runs, t) for t in ("grpc_ceiling", "http_ceiling", *igbuttons)}
    added: dict[str, Any] = {}
    direct = _at(runs, "http_ceiling", 1)
    for target in igbuttons:
        run = _at(runs, target, 1)
        if run is None or direct is None or not run["calls"] or not direct["calls"]:
            continue
        added[target] = {
            f"{p}_ms": round(run["latency"][f"{p}_ms"] - direct["latency"][f"{p}_ms"], 4)
            for p in ("p50", "p99")
        }
    return {
        "best_calls_per_s": best,
        "best_ratio_vs_grpc_ceiling": {t: ratio(best[t], best["grpc_ceiling"]) for t in igbuttons},
        "per_concurrency": per_concurrency,
        "added_latency_c1": added,
    }


def combine(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """One record from the repetitions of a target at one concurrency.

    Throughput, each latency percentile and CPU are the median over repetitions (robust to
    one repetition hit by background work); calls and errors add up; peak RSS is the max.
    """
    out = dict(reps[0])
    out.pop("rep", None)
    out["repetitions"] = len(reps)
    rates = [r["calls_per_s"] for r in reps]
    out["calls_per_s"] = round(statistics.median(rates), 1)
    out["calls_per_s_min"], out["calls_per_s_max"] = min(rates), max(rates)
    out["calls"] = sum(r["calls"] for r in reps)
    errors: Counter[str] = Counter()
    for r in reps:
        errors.update(r["errors"])
    out["errors"] = dict(errors)
    out["first_error"] = next((r["first_error"] for r in reps if r["first_error"]), None)
    out["latency"] = {key: _median([r["latency"][key] for r in reps]) for key in reps[0]["latency"]}
    out["latency"]["count"] = sum(r["latency"]["count"] for r in reps)
    out["latency"]["max_ms"] = _max([r["latency"]["max_ms"] for r in reps])
    out["loadgen_cpu_seconds"] = round(sum(r["loadgen_cpu_seconds"] for r in reps), 3)
    out["usage"] = {}
    for role in reps[0]["usage"]:
        usages = [r["usage"][role] for r in reps]
        combined = {key: _median([u.get(key) for u in usages]) for key in usages[0]}
        if "peak_rss_mb" in usages[0]:
            combined["peak_rss_mb"] = _max([u["peak_rss_mb"] for u in usages])
        if "cpu_seconds" in usages[0]:
            combined["cpu_seconds"] = round(sum(u["cpu_seconds"] for u in usages), 3)
        out["usage"][role] = combined
    return out


def _median(values: list[Any]) -> Any:
    numbers = [v for v in values if isinstance(v, int | float)]
    return round(statistics.median(numbers), 4) if numbers else None


def _max(values: list[Any]) -> Any:
    numbers = [v for v in values if isinstance(v, int | float)]
    return max(numbers) if numbers else None


def run(plan: Plan, work: Path, knobs: ServerKnobs) -> dict[str, Any]:
    """The whole send benchmark.

    Every target's servers are started first and stay up (idle ones cost next to nothing).
    Then, for each concurrency level, ``plan.send_repeats`` rounds each run every target in
    turn, so targets are compared under the same background load and a burst of other work
    on the machine hits one repetition, not one target.
    """
    targets: list[Target] = []
    skipped: dict[str, str] = {}
    raw: list[dict[str, Any]] = []
    try:
        for name in plan.send_targets:
            try:
                targets.append(_start(name, work, knobs))
            except (Skip, ChildFailed) as exc:
                skipped[name] = str(exc)
                print(f"  send: skipped {name}: {exc}", flush=True)
        for concurrency in plan.send_concurrency:
            print(f"send: {concurrency} concurrent callers", flush=True)
            for rep in range(plan.send_repeats):
                for target in targets:
                    try:
                        result = _load(target, concurrency, plan, work)
                    except ChildFailed as exc:
                        skipped[f"{target.name}@{concurrency}"] = str(exc)
                        print(f"  FAILED {target.name} c={concurrency}: {exc}", flush=True)
                        continue
                    result["rep"] = rep
                    raw.append(result)
    finally:
        for target in reversed(targets):
            target.stop()
    runs = [
        combine(reps)
        for t in targets
        for c in plan.send_concurrency
        if (reps := [r for r in raw if r["target"] == t.name and r["concurrency"] == c])
    ]
    return {
        "runs": runs,
        "repetitions": raw,
        "skipped": skipped,
        "targets": [t.name for t in targets],
        "summary": summarise(runs, plan.send_concurrency, [t.name for t in targets]),
    }
