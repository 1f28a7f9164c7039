"""The send benchmark: igbutton against its gRPC and HTTP ceilings, at several concurrencies.

Targets (each server in its own process, the load generator in another):
- ``grpc_ceiling``: bare grpc.aio unary calls to a trivial servicer (bench.ceiling_grpc);
- ``http_ceiling``: aiohttp POSTs of the same Graph JSON straight to the sandbox;
- ``igbutton_client``: the headline, what users run: igbutton through its Python
  ``AsyncClient`` with its defaults, so a ``request_id`` on every send (idempotent sends);
- ``igbutton``: the same server called through the raw stub without ``request_id`` (plain
  sends: the idempotency store is not used);
- ``igbutton_inproc``: the raw stub with igbutton's in-process sandbox (``--sandbox``).

Then the peers, at ``plan.peer_concurrency`` (50) callers: igbutton's ``AsyncClient`` and
its blocking ``Client`` on a 50-thread pool, fbmessenger and pymessenger on a 50-thread
pool, and direct aiohttp, all to the same kind of sandbox (bench.peers). igbutton targets
share one igbutton (``igbutton``'s), peers share the HTTP ceiling's sandbox.

Every window measures the CPU seconds of the servers and of the caller (the load
generator's process), and on SQLite the igbutton writer's commits (each one WAL fsync).
"""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
import subprocess
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench import payloads, peers, procs, servers
from bench.plan import Plan
from bench.procs import ChildFailed, Meter
from bench.servers import Running, ServerKnobs
from bench.stats import ratio
from igbutton.v1 import send_service_pb2_grpc


class Skip(Exception):
    """This target cannot run in this checkout (the reason is recorded)."""


def run_load(
    name: str,
    args: list[str],
    meters: dict[str, Meter | CommitsMeter],
    work: Path,
    duration: float,
) -> dict[str, Any]:
    """Run one load generator; measure the servers between its start and end events.

    ``usage["machine"]`` is every core's use over the window, the load generator's and
    anything else running on the machine included: a check on how quiet the machine was.
    ``usage["caller"]`` is the load generator's own process: the caller's CPU.
    """
    child = procs.start(name, [procs.PYTHON, "-m", *args], work, pipes=True)
    machine = procs.MachineMeter()
    meters = {**meters, "caller": Meter(child.pid)}
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


class CommitsMeter:
    """The igbutton writer's SQLite commits over a window, read from its ``/metrics``.

    bench.serve_igbutton exposes ``SqliteWriter.commits`` as
    ``igbutton_bench_sqlite_commits_total``; every commit is one durable write transaction
    (one WAL fsync, with ``synchronous=FULL``), shared by the jobs queued together.
    """

    _LINE = re.compile(r"^igbutton_bench_sqlite_commits_total\s+([0-9.e+]+)$", re.MULTILINE)

    def __init__(self, http_port: int) -> None:
        self._url = f"http://127.0.0.1:{http_port}/metrics"
        self._start: float | None = None

    def _read(self) -> float | None:
        try:
            with urllib.request.urlopen(self._url, timeout=5) as response:  # noqa: S310 - loopback
                text = response.read().decode()
        except OSError:
            return None
        match = self._LINE.search(text)
        return float(match.group(1)) if match else None

    def begin(self) -> None:
        """Start the window."""
        self._start = self._read()

    def end(self) -> dict[str, Any]:
        """The commits in the window (None when the counter could not be read)."""
        now = self._read()
        if now is None or self._start is None:
            return {"commits": None}
        return {"commits": int(now - self._start)}


@dataclass
class Target:
    """A started send target: its processes and how to load and measure it.

    ``mode`` is how the load generator calls it: ``grpc`` (raw stub, no request_id),
    ``client`` (igbutton's AsyncClient), ``http`` (the ceiling), ``aiohttp``, or one of the
    thread-pool libraries of bench.peers. ``owned`` is False for a target that shares the
    processes of another (they are stopped once, by their owner).
    """

    name: str
    processes: list[Running]
    server: Running
    grpc: str | None = None
    http: str | None = None
    sandbox_url: str | None = None
    sandbox: Running | None = None
    channels: int = 1
    mode: str = "grpc"
    owned: bool = True
    commits_port: int | None = None

    def stop(self) -> None:
        """Stop its processes, last started first."""
        if not self.owned:
            return
        for running in reversed(self.processes):
            running.stop()


PEER_MODES = {
    "igbutton_client": "client",
    "igbutton_sync": "igbutton_sync",
    "peer_fbmessenger": "fbmessenger",
    "peer_pymessenger": "pymessenger",
    "peer_aiohttp": "aiohttp",
}
"""Targets that reuse another target's processes, and how they are called."""


def _owner_of(target: str) -> str:
    """The target whose processes a peer target calls: ``igbutton`` or ``http_ceiling``."""
    return "igbutton" if target.startswith("igbutton") else "http_ceiling"


def _shared(target: str, owner: Target) -> Target:
    """A target on the processes of ``owner`` (stopped by the owner, not by this one)."""
    mode = PEER_MODES[target]
    return dataclasses.replace(
        owner, name=target, mode=mode, owned=False, http=None if mode == "aiohttp" else owner.http
    )


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
            commits_port=_commits_port(igb, mine),
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
            commits_port=_commits_port(igb, mine),
        )
    try:
        assert started.grpc is not None
        probe_send(started.grpc)
    except BaseException:
        started.stop()
        raise
    return started


def _commits_port(igb: Running, knobs: ServerKnobs) -> int | None:
    # One worker's /metrics sees one writer: commits are counted with a single worker only.
    if knobs.backend != "sqlite" or knobs.workers != 1:
        return None
    port = igb.ports.get("http")
    return int(port) if port else None


def _load_args(target: Target, concurrency: int, plan: Plan) -> list[str]:
    timing = [f"--duration={plan.send_duration}", f"--warmup={plan.send_warmup}"]
    common = [f"--concurrency={concurrency}", *timing]
    channels = f"--channels={min(target.channels, concurrency)}"
    if target.mode in peers.THREAD_LIBRARIES:
        where = (
            f"--target={target.grpc}"
            if target.mode == "igbutton_sync"
            else f"--sandbox-url={target.sandbox_url}"
        )
        return ["bench.loadgen_threads", target.mode, where, f"--threads={concurrency}", *timing]
    if target.mode == "aiohttp":
        return ["bench.loadgen_send", "aiohttp", f"--sandbox-url={target.sandbox_url}", *common]
    if target.mode == "client":
        return ["bench.loadgen_send", "client", f"--target={target.grpc}", channels, *common]
    if target.http is not None:
        return ["bench.loadgen_send", "http", f"--url={target.http}", *common]
    return ["bench.loadgen_send", "grpc", f"--target={target.grpc}", channels, *common]


def _load(target: Target, concurrency: int, plan: Plan, work: Path) -> dict[str, Any]:
    if target.sandbox_url is not None:
        servers.reset_sandbox(target.sandbox_url)
    meters: dict[str, Meter | CommitsMeter] = {"server": Meter(target.server.child.pid)}
    if target.sandbox is not None:
        meters["sandbox"] = Meter(target.sandbox.child.pid)
    if target.commits_port is not None:
        meters["storage"] = CommitsMeter(target.commits_port)
    args = _load_args(target, concurrency, plan)
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
        "idempotent_vs_plain": ratio(best.get("igbutton_client"), best.get("igbutton")),
        "best_ratio_vs_grpc_ceiling": {t: ratio(best[t], best["grpc_ceiling"]) for t in igbuttons},
        "per_concurrency": per_concurrency,
        "added_latency_c1": added,
    }


def cpu_us_per_send(run: dict[str, Any], role: str) -> float | None:
    """CPU microseconds per completed send of one role (server, sandbox, caller, machine)."""
    seconds = run.get("usage", {}).get(role, {}).get("cpu_seconds")
    if seconds is None or not run.get("calls"):
        return None
    return round(float(seconds) * 1e6 / run["calls"], 1)


def commits_per_send(run: dict[str, Any]) -> float | None:
    """igbutton's SQLite commits (fsyncs of its WAL) per completed send in the window."""
    commits = run.get("usage", {}).get("storage", {}).get("commits")
    if commits is None or not run.get("calls"):
        return None
    return round(commits / run["calls"], 3)


def _per_send(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "calls_per_s": run["calls_per_s"],
        "p50_ms": run["latency"]["p50_ms"],
        "p99_ms": run["latency"]["p99_ms"],
        "errors": sum(run["errors"].values()),
        "caller_cpu_us": cpu_us_per_send(run, "caller"),
        "server_cpu_us": cpu_us_per_send(run, "server"),
        "sandbox_cpu_us": cpu_us_per_send(run, "sandbox"),
        "commits_per_send": commits_per_send(run),
    }


def summarise_peers(peer_runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each peer's figures per send, and igbutton's AsyncClient against fbmessenger."""
    table = {run["target"]: _per_send(run) for run in peer_runs if run["calls"]}
    mine, theirs = table.get("igbutton_client"), table.get("peer_fbmessenger")
    versus: dict[str, float | None] = {}
    if mine and theirs:
        versus = {
            "throughput": ratio(mine["calls_per_s"], theirs["calls_per_s"]),
            "p99": ratio(mine["p99_ms"], theirs["p99_ms"]),
            "caller_cpu": ratio(mine["caller_cpu_us"], theirs["caller_cpu_us"]),
        }
    return {"per_send": table, "igbutton_client_vs_fbmessenger": versus}


def idempotent_cost(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At each concurrency: what a request_id send costs over a plain one, same server.

    ``igbutton_client`` (AsyncClient, request_id) against ``igbutton`` (raw stub, none):
    igbutton's CPU per send for each and the difference, the caller's CPU per send, and
    the SQLite commits (WAL fsyncs) per send.
    """
    out = []
    for client in (r for r in runs if r["target"] == "igbutton_client" and r["calls"]):
        plain = _at(runs, "igbutton", client["concurrency"])
        row: dict[str, Any] = {
            "concurrency": client["concurrency"],
            "idempotent": _per_send(client),
            "plain": _per_send(plain) if plain and plain["calls"] else None,
        }
        if row["plain"]:
            mine, base = row["idempotent"], row["plain"]
            row["throughput_ratio"] = ratio(mine["calls_per_s"], base["calls_per_s"])
            if mine["server_cpu_us"] is not None and base["server_cpu_us"] is not None:
                row["server_cpu_us_added"] = round(mine["server_cpu_us"] - base["server_cpu_us"], 1)
        out.append(row)
    return out


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
        if "commits" in usages[0]:
            counts = [u["commits"] for u in usages]
            combined["commits"] = None if None in counts else sum(counts)
        out["usage"][role] = combined
    return out


def _median(values: list[Any]) -> Any:
    numbers = [v for v in values if isinstance(v, int | float)]
    return round(statistics.median(numbers), 4) if numbers else None


def _max(values: list[Any]) -> Any:
    numbers = [v for v in values if isinstance(v, int | float)]
    return max(numbers) if numbers else None


def _rounds(
    targets: list[Target],
    levels: tuple[int, ...],
    plan: Plan,
    work: Path,
    failures: dict[str, str],
) -> list[dict[str, Any]]:
    """Each level: ``plan.send_repeats`` rounds, each running every target once in turn.

    A run that fails (its process, or :func:`measured_nothing`) is recorded in ``failures``.
    """
    raw: list[dict[str, Any]] = []
    for concurrency in levels:
        print(f"send: {concurrency} concurrent callers", flush=True)
        for rep in range(plan.send_repeats):
            for target in targets:
                try:
                    result = _load(target, concurrency, plan, work)
                except ChildFailed as exc:
                    failures[f"{target.name}@{concurrency}#{rep}"] = str(exc)
                    print(f"  FAILED {target.name} c={concurrency}: {exc}", flush=True)
                    continue
                result["rep"] = rep
                raw.append(result)
                problem = measured_nothing(result)
                if problem is not None:
                    failures[f"{target.name}@{concurrency}#{rep}"] = problem
                    print(f"  FAILED {target.name} c={concurrency}: {problem}", flush=True)
    return raw


def measured_nothing(run: dict[str, Any]) -> str | None:
    """Why a load run cannot be reported (None: it can): no call completed in its window,
    or some call failed. A figure of such a run would compare a broken target."""
    if run["errors"] or run["first_error"]:
        return f"errors {run['errors']}: {run['first_error']}"
    if not run["calls"]:
        return "no call completed in the measured window"
    return None


def _combined(raw: list[dict[str, Any]], targets: list[Target]) -> list[dict[str, Any]]:
    return [
        combine(reps)
        for t in targets
        for c in sorted({r["concurrency"] for r in raw})
        if (reps := [r for r in raw if r["target"] == t.name and r["concurrency"] == c])
    ]


def _start_all(
    names: tuple[str, ...], work: Path, knobs: ServerKnobs, skipped: dict[str, str]
) -> dict[str, Target]:
    """Start each target's processes once. A peer target's owner is started (and kept
    under its own name) before it, even when the owner is not a target itself: starting
    igbutton twice would delete the first one's SQLite file under it."""
    started: dict[str, Target] = {}
    for name in dict.fromkeys(names):
        try:
            if name in PEER_MODES:
                owner = _owner_of(name)
                if owner not in started:
                    started[owner] = _start(owner, work, knobs)
                started[name] = _shared(name, started[owner])
            elif name not in started:
                started[name] = _start(name, work, knobs)
        except (Skip, ChildFailed) as exc:
            skipped[name] = str(exc)
            print(f"  send: skipped {name}: {exc}", flush=True)
    return started


def run(plan: Plan, work: Path, knobs: ServerKnobs) -> dict[str, Any]:
    """The whole send benchmark.

    Every target's servers are started first and stay up (idle ones cost next to nothing).
    Then, for each concurrency level, ``plan.send_repeats`` rounds each run every target in
    turn, so targets are compared under the same background load and a burst of other work
    on the machine hits one repetition, not one target. The peers then run the same way at
    ``plan.peer_concurrency`` callers.
    """
    skipped: dict[str, str] = {}
    failures: dict[str, str] = {}
    started: dict[str, Target] = {}
    try:
        started = _start_all((*plan.send_targets, *plan.peer_targets), work, knobs, skipped)
        main = [started[n] for n in plan.send_targets if n in started]
        peer = [started[n] for n in plan.peer_targets if n in started]
        raw = _rounds(main, plan.send_concurrency, plan, work, failures)
        peer_raw = (
            _rounds(peer, (plan.peer_concurrency,), plan, work, failures)
            if plan.peer_concurrency
            else []
        )
    finally:
        for target in reversed(list(started.values())):
            target.stop()
    runs = _combined(raw, main)
    peer_runs = _combined(peer_raw, peer)
    names = [t.name for t in main]
    return {
        "runs": runs,
        "repetitions": raw,
        "peer_runs": peer_runs,
        "peer_repetitions": peer_raw,
        "peer_concurrency": plan.peer_concurrency,
        "skipped": skipped,
        "failures": failures,
        "targets": names,
        "peer_targets": [t.name for t in peer],
        "summary": summarise(runs, plan.send_concurrency, names),
        "peer_summary": summarise_peers(peer_runs),
        "idempotent_cost": idempotent_cost(runs),
    }


def store_cost(plan: Plan, work: Path, backends: list[str]) -> dict[str, Any]:
    """bench.idempotency_cost on each backend: the idempotency store's CPU and durable
    writes per send at 1 and ``plan.peer_concurrency`` callers, without gRPC or HTTP."""
    out: dict[str, Any] = {}
    levels = f"1,{plan.peer_concurrency}"
    for backend in backends:
        args = [procs.PYTHON, "-m", "bench.idempotency_cost", f"--backend={backend}"]
        args += [f"--concurrency={levels}", f"--sends={plan.store_cost_sends}"]
        args.append(f"--work-dir={work / f'store-cost-{backend}'}")
        try:
            done = subprocess.run(
                args, cwd=procs.REPO, capture_output=True, text=True, timeout=600, check=True
            )
        except (subprocess.SubprocessError, OSError) as exc:
            out[backend] = {"failed": str(exc)[-2000:]}
            print(f"  FAILED store cost ({backend}): {exc}", flush=True)
            continue
        rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        out[backend] = {"rows": rows}
        for row in rows:
            print(
                f"  store cost {backend:<6} c={row['concurrency']:<3} "
                f"{row['cpu_us_per_send']:>7.1f} µs CPU/send"
                f"  commits/send={row.get('commits_per_send', '-')}"
                f"  nats-server µs/send={row.get('nats_server_cpu_us_per_send', '-')}",
                flush=True,
            )
    return out
