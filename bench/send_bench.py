"""The send benchmark: igbutton against its gRPC and HTTP ceilings, at several concurrencies.

Targets (each server in its own process, the load generator in another):
- ``grpc_ceiling``: bare grpc.aio unary calls to a trivial servicer (bench.ceiling_grpc);
- ``http_ceiling``: aiohttp POSTs of the same Graph JSON straight to the sandbox;
- ``igbutton``: SendButtonTemplate through igbutton to the sandbox in its own process;
- ``igbutton_inproc``: the same with igbutton's in-process sandbox (``--sandbox``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
from igbutton.v1 import send_service_pb2_grpc

from bench import payloads, procs, servers
from bench.plan import Plan
from bench.procs import ChildFailed, Meter
from bench.servers import Running, ServerKnobs
from bench.stats import ratio


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


def _start(target: str, work: Path, knobs: ServerKnobs) -> tuple[list[Running], dict[str, Any]]:
    """Start the servers of a target; return them and how to load and measure them."""
    if target == "grpc_ceiling":
        ceiling = servers.start_grpc_ceiling(work)
        return [ceiling], {"grpc": f"127.0.0.1:{ceiling.ports['grpc']}", "server": ceiling}
    if not servers.have_sandbox():
        raise Skip("no service/sandbox in this build")
    if target == "http_ceiling":
        sandbox = servers.start_sandbox("sandbox-http", work)
        url = sandbox.ports["url"]
        return [sandbox], {
            "http": url + payloads.graph_path(),
            "sandbox_url": url,
            "server": sandbox,
        }
    if target == "igbutton":
        sandbox = servers.start_sandbox("sandbox-send", work)
        try:
            igb = servers.start_igbutton(
                "igbutton-send", work, knobs, graph_url=sandbox.ports["url"]
            )
        except BaseException:
            sandbox.stop()
            raise
        return [sandbox, igb], {
            "grpc": f"127.0.0.1:{igb.ports['grpc']}",
            "sandbox_url": sandbox.ports["url"],
            "server": igb,
            "sandbox": sandbox,
        }
    if target == "igbutton_inproc":
        igb = servers.start_igbutton("igbutton-inproc", work, knobs, in_process_sandbox=True)
        return [igb], {
            "grpc": f"127.0.0.1:{igb.ports['grpc']}",
            "sandbox_url": f"http://127.0.0.1:{igb.ports['sandbox']}",
            "server": igb,
        }
    raise ValueError(target)


def _run_target(
    target: str, plan: Plan, work: Path, knobs: ServerKnobs, channels: int
) -> list[dict[str, Any]]:
    started, how = _start(target, work, knobs)
    runs: list[dict[str, Any]] = []
    try:
        if target.startswith("igbutton"):
            probe_send(how["grpc"])
        for concurrency in plan.send_concurrency:
            if "sandbox_url" in how:
                servers.reset_sandbox(how["sandbox_url"])
            meters = {"server": Meter(how["server"].child.pid)}
            if "sandbox" in how:
                meters["sandbox"] = Meter(how["sandbox"].child.pid)
            common = [
                f"--concurrency={concurrency}",
                f"--duration={plan.send_duration}",
                f"--warmup={plan.send_warmup}",
            ]
            if "http" in how:
                args = ["bench.loadgen_send", "http", f"--url={how['http']}", *common]
            else:
                conns = min(channels, concurrency)
                args = [
                    "bench.loadgen_send",
                    "grpc",
                    f"--target={how['grpc']}",
                    f"--channels={conns}",
                    *common,
                ]
            result = run_load(
                f"load-{target}-c{concurrency}", args, meters, work, plan.send_duration
            )
            result["target"] = target
            runs.append(result)
            _print_run(result)
    finally:
        for running in reversed(started):
            running.stop()
    return runs


def _print_run(run: dict[str, Any]) -> None:
    lat = run["latency"]
    server = run["usage"]["server"]
    errors = f" errors={run['errors']} ({run['first_error']})" if run["errors"] else ""
    print(
        f"  send {run['target']:<16} c={run['concurrency']:<3} {run['calls_per_s']:>9.1f} calls/s"
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


def summarise(runs: list[dict[str, Any]], concurrency: tuple[int, ...]) -> dict[str, Any]:
    """Ratios against the ceilings (per concurrency and best of each) and added latency."""
    per_concurrency = []
    for c in concurrency:
        row: dict[str, Any] = {"concurrency": c}
        ceiling = _at(runs, "grpc_ceiling", c)
        http = _at(runs, "http_ceiling", c)
        for target in ("igbutton", "igbutton_inproc"):
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
    best = {
        t: _best(runs, t) for t in ("grpc_ceiling", "http_ceiling", "igbutton", "igbutton_inproc")
    }
    added: dict[str, Any] = {}
    direct = _at(runs, "http_ceiling", 1)
    for target in ("igbutton", "igbutton_inproc"):
        run = _at(runs, target, 1)
        if run is None or direct is None or not run["calls"] or not direct["calls"]:
            continue
        added[target] = {
            f"{p}_ms": round(run["latency"][f"{p}_ms"] - direct["latency"][f"{p}_ms"], 4)
            for p in ("p50", "p99")
        }
    return {
        "best_calls_per_s": best,
        "best_ratio_vs_grpc_ceiling": {
            t: ratio(best[t], best["grpc_ceiling"]) for t in ("igbutton", "igbutton_inproc")
        },
        "per_concurrency": per_concurrency,
        "added_latency_c1": added,
    }


def run(plan: Plan, work: Path, knobs: ServerKnobs) -> dict[str, Any]:
    """The whole send benchmark."""
    runs: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    channels = 1 if knobs.workers == 1 else 4 * knobs.workers
    for target in plan.send_targets:
        print(f"send: {target}", flush=True)
        try:
            runs += _run_target(target, plan, work, knobs, channels)
        except (Skip, ChildFailed) as exc:
            skipped[target] = str(exc)
            print(f"  skipped {target}: {exc}", flush=True)
    return {
        "runs": runs,
        "skipped": skipped,
        "grpc_channels": channels,
        "summary": summarise(runs, plan.send_concurrency),
    }
