"""The postback benchmark: signed webhooks in, subscribers out, for one storage backend.

- *throughput*: closed-loop posters (batches of 1 and 50) find the most events/s igbutton
  stores (each answered 200 only once durably appended), with one reading subscriber;
- *latency cases*: open-loop deliveries at a fixed rate, fanned out to K broadcast
  subscribers or one 3-member group; end-to-end latency from POST to receipt;
- *memory*: a subscriber that reads nothing while 100,000 events arrive; the server's RSS
  before and after.
Each run gets a fresh igbutton (and, for NATS, a fresh nats-server), so the runs are
independent and each peak RSS belongs to one load.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from bench import payloads, procs, servers
from bench.plan import Plan, PostbackCase
from bench.procs import Child, ChildFailed, Meter
from bench.send_bench import Skip
from bench.servers import Running, ServerKnobs
from igbutton.v1 import postback_service_pb2, postback_service_pb2_grpc


def _webhook_url(igb: Running) -> str:
    return f"http://127.0.0.1:{igb.ports['webhook']}/webhook"


def probe_postbacks(igb: Running) -> None:
    """Skip unless this build stores signed webhooks and serves SubscribePostbacks."""
    if not igb.ports.get("webhook"):
        raise Skip("this build serves no webhook")
    body = payloads.webhook_body([f"probe-{time.time_ns()}"], "probe|")
    request = urllib.request.Request(  # noqa: S310 - a loopback http URL we built
        _webhook_url(igb), data=body, method="POST"
    )
    request.add_header("Content-Type", "application/json")
    request.add_header("X-Hub-Signature-256", payloads.signature(body))
    try:
        with urllib.request.urlopen(request, timeout=20) as response:  # noqa: S310 - loopback
            response.read()
    except urllib.error.HTTPError as exc:
        raise Skip(f"webhook answered {exc.code}: postbacks not in this build?") from None
    except urllib.error.URLError as exc:
        raise Skip(f"webhook unreachable: {exc.reason}") from None
    with grpc.insecure_channel(f"127.0.0.1:{igb.ports['grpc']}") as channel:
        stub = postback_service_pb2_grpc.PostbackServiceStub(channel)
        stream = stub.SubscribePostbacks(
            postback_service_pb2.SubscribePostbacksRequest(), timeout=0.5
        )
        try:
            for _ in stream:
                break
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNIMPLEMENTED:
                raise Skip("PostbackService is not implemented in this build") from None
            if code != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise Skip(f"SubscribePostbacks failed: {code.name}") from None


def _subscribers(
    name: str, igb: Running, work: Path, streams: int, *, group: str = "", idle: bool = False
) -> Child:
    args = [
        procs.PYTHON,
        "-m",
        "bench.subscribers",
        f"--target=127.0.0.1:{igb.ports['grpc']}",
        f"--streams={streams}",
    ]
    if group:
        args.append(f"--group={group}")
    if idle:
        args.append("--idle")
    child = procs.start(name, args, work, pipes=True)
    procs.expect_event(child, "ready", timeout=120)
    return child


def _post(name: str, igb: Running, work: Path, args: list[str], limit: float) -> dict[str, Any]:
    """Run one poster; measure igbutton (and nats-server, as "storage") over its window."""
    child = procs.start(
        name,
        [procs.PYTHON, "-m", "bench.loadgen_webhook", f"--url={_webhook_url(igb)}", *args],
        work,
        pipes=True,
    )
    meters = {"server": Meter(igb.child.pid)}
    for helper in igb.helpers:
        meters["storage"] = Meter(helper.pid)
    machine = procs.MachineMeter()
    try:
        procs.expect_event(child, "start", timeout=120)
        machine.begin()
        for meter in meters.values():
            meter.begin()
        procs.expect_event(child, "end", timeout=limit)
        usage = {role: meter.end() for role, meter in meters.items()}
        usage["machine"] = machine.end()
        result = procs.expect_event(child, "result", timeout=300)
    finally:
        child.stop()
    result.pop("event", None)
    result["usage"] = usage
    return result


def _drain(subs: Child, expect: int, limit: float = 300) -> dict[str, Any]:
    procs.send_command(subs, {"cmd": "drain", "expect": expect})
    result = procs.expect_event(subs, "result", timeout=limit)
    result.pop("event", None)
    return result


def _fresh_server(name: str, work: Path, knobs: ServerKnobs) -> Running:
    try:
        igb = servers.start_igbutton(name, work, knobs)
    except ChildFailed as exc:
        last = str(exc).strip().splitlines()[-1]
        raise Skip(
            f"igbutton does not start with storage backend {knobs.backend!r}: {last}"
        ) from None
    try:
        probe_postbacks(igb)
    except BaseException:
        igb.stop()
        raise
    return igb


def _throughput(plan: Plan, batch: int, work: Path, knobs: ServerKnobs) -> dict[str, Any]:
    name = f"pb-{knobs.backend}-max-b{batch}"
    igb = _fresh_server(name, work, knobs)
    subs: Child | None = None
    try:
        subs = _subscribers(f"{name}-subs", igb, work, 1)
        result = _post(
            f"{name}-post",
            igb,
            work,
            [
                f"--batch={batch}",
                "--rate=0",
                f"--concurrency={plan.throughput_concurrency}",
                f"--duration={plan.postback_duration}",
                f"--warmup={plan.postback_warmup}",
                f"--run-id={name}-{time.time_ns()}",
            ],
            plan.postback_duration + 120,
        )
        result["subscribers"] = _drain(subs, result["bench_events_ok"])
    finally:
        if subs is not None:
            subs.stop()
        igb.stop()
    result["case"] = f"max-b{batch}"
    _print(result)
    return result


def _case(plan: Plan, case: PostbackCase, work: Path, knobs: ServerKnobs) -> dict[str, Any]:
    name = f"pb-{knobs.backend}-{case.name}"
    igb = _fresh_server(name, work, knobs)
    subs: Child | None = None
    try:
        group = f"bench-{time.time_ns()}" if case.group else ""
        subs = _subscribers(f"{name}-subs", igb, work, case.subscribers, group=group)
        result = _post(
            f"{name}-post",
            igb,
            work,
            [
                f"--batch={case.batch}",
                f"--rate={case.rate}",
                "--concurrency=256",
                f"--duration={plan.postback_duration}",
                f"--warmup={plan.postback_warmup}",
                f"--run-id={name}-{time.time_ns()}",
            ],
            plan.postback_duration + 120,
        )
        result["subscribers"] = _drain(subs, result["bench_events_ok"])
    finally:
        if subs is not None:
            subs.stop()
        igb.stop()
    result["case"] = case.name
    result["subscriber_count"] = case.subscribers
    result["group"] = case.group
    _print(result)
    return result


def _memory(plan: Plan, work: Path, knobs: ServerKnobs) -> dict[str, Any]:
    """RSS before and after plan.memory_events arrive for a subscriber that never reads."""
    name = f"pb-{knobs.backend}-memory"
    igb = _fresh_server(name, work, knobs)
    subs: Child | None = None
    try:
        warm = _post(
            f"{name}-warm",
            igb,
            work,
            [
                "--batch=50",
                "--concurrency=4",
                f"--count={plan.memory_warmup_events}",
                f"--run-id={name}-warm-{time.time_ns()}",
            ],
            600,
        )
        subs = _subscribers(f"{name}-subs", igb, work, 1, idle=True)
        before = procs.rss_mb(igb.child.pid)
        load = _post(
            f"{name}-post",
            igb,
            work,
            [
                "--batch=50",
                "--concurrency=4",
                f"--count={plan.memory_events}",
                f"--run-id={name}-{time.time_ns()}",
            ],
            600,
        )
        after = procs.rss_mb(igb.child.pid)
        _drain(subs, 0)
    finally:
        if subs is not None:
            subs.stop()
        igb.stop()
    result = {
        "events": load["bench_events_ok"],
        "events_per_s": load["events_per_s"],
        "errors": {**warm["errors"], **load["errors"]},
        "rss_before_mb": before,
        "rss_after_mb": after,
        "growth_mb": round(after - before, 2),
        "peak_rss_mb": load["usage"]["server"]["peak_rss_mb"],
        "cpu_seconds": load["usage"]["server"]["cpu_seconds"],
    }
    print(
        f"  memory: {result['events']} events to a subscriber that reads nothing: "
        f"RSS {before} -> {after} MB (growth {result['growth_mb']} MB, "
        f"peak {result['peak_rss_mb']} MB)",
        flush=True,
    )
    return result


def _print(run: dict[str, Any]) -> None:
    subs = run["subscribers"]
    lat = subs["latency"]
    errors = f" errors={run['errors']} ({run['first_error']})" if run["errors"] else ""
    sub_err = f" sub_errors={subs['errors']} ({subs['first_error']})" if subs["errors"] else ""
    storage = run["usage"].get("storage")
    if storage:
        sub_err += f" nats-server cpu={storage['cpu_seconds']}s peak_rss={storage['peak_rss_mb']}MB"
    print(
        f"  postbacks {run['case']:<18} stored {run['events_per_s']:>8.1f} ev/s"
        f"  e2e p50={lat['p50_ms']} p99={lat['p99_ms']} ms  received {subs['received']}"
        f"/{subs['expected']}  server cpu={run['usage']['server']['cpu_seconds']}s"
        f" peak_rss={run['usage']['server']['peak_rss_mb']}MB"
        f" machine busy={run['usage']['machine']['busy_percent_of_all_cores']}%{errors}{sub_err}",
        flush=True,
    )


def run(plan: Plan, work: Path, knobs: ServerKnobs) -> dict[str, Any]:
    """The whole postback benchmark for knobs.backend.

    A run whose processes fail is recorded under ``failed`` and the others go on; a build
    without the postback path (Skip) ends the section.
    """
    out: dict[str, Any] = {"backend": knobs.backend, "throughput": [], "cases": [], "failed": {}}
    print(f"postbacks ({knobs.backend})", flush=True)
    steps: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
        *(
            ("throughput", f"max-b{b}", lambda b=b: _throughput(plan, b, work, knobs))
            for b in plan.throughput_batches
        ),
        *(("cases", c.name, lambda c=c: _case(plan, c, work, knobs)) for c in plan.postback_cases),
        ("memory", "memory", lambda: _memory(plan, work, knobs)),
    ]
    for key, name, step in steps:
        try:
            result = step()
        except Skip as exc:
            out["skipped"] = str(exc)
            print(f"  skipped postbacks ({knobs.backend}): {exc}", flush=True)
            break
        except ChildFailed as exc:
            out["failed"][name] = str(exc)
            print(f"  FAILED {name} ({knobs.backend}): {exc}", flush=True)
            continue
        if key == "memory":
            out["memory"] = result
        else:
            out[key].append(result)
            problem = measured_nothing(result)
            if problem is not None:
                out["failed"][name] = problem
                print(f"  FAILED {name} ({knobs.backend}): {problem}", flush=True)
    return out


def measured_nothing(run: dict[str, Any]) -> str | None:
    """Why a postback run cannot be reported (None: it can): nothing was stored, a POST
    or a subscriber failed, or postbacks never reached the subscribers."""
    subs = run["subscribers"]
    if run["errors"] or run["first_error"]:
        return f"webhook POST errors {run['errors']}: {run['first_error']}"
    if subs["errors"] or subs["first_error"]:
        return f"subscriber errors {subs['errors']}: {subs['first_error']}"
    if not run["bench_events_ok"]:
        return "no postback was accepted in the measured window"
    if subs["missing"]:
        return f"{subs['missing']} of {subs['expected']} postbacks never reached the subscribers"
    return None
