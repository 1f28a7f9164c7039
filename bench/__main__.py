"""``python -m bench``: run the benchmarks and write results, chart and docs table.

Environment knobs (all optional):
  BENCH_QUICK=1               the ~1-minute smoke plan (does not touch docs/performance.md)
  BENCH_BACKENDS=sqlite,nats  storage backends for the postback benchmark
  BENCH_LABEL=name            results file name (default: from the plan and server knobs)
  BENCH_SEND_TARGETS=a,b      send targets, e.g. grpc_ceiling,http_ceiling,igbutton,
                              igbutton_asyncio,igbutton_workers2 (knobs side by side)
  IGBUTTON_BENCH_UVLOOP=0     run igbutton on asyncio's loop (default: uvloop, as shipped)
  IGBUTTON_BENCH_WORKERS=N    run igbutton as N SO_REUSEPORT worker processes
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import postback_bench, procs, report, send_bench
from bench.plan import PLANS, Plan
from bench.servers import ServerKnobs
from bench.targets import check

RESULTS = procs.REPO / "bench" / "results"
DOC = procs.REPO / "docs" / "performance.md"
SECTIONS = ("send", "postbacks")


def _label(plan: Plan, knobs: ServerKnobs) -> str:
    parts = [] if plan.name == "full" else [plan.name]
    if not knobs.uvloop:
        parts.append("asyncio")
    if knobs.workers > 1:
        parts.append(f"workers{knobs.workers}")
    return "-".join(parts) or "default"


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=procs.REPO, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("grpcio", "aiohttp", "protobuf", "uvloop"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _meta(plan: Plan, knobs: ServerKnobs, label: str, backends: list[str]) -> dict[str, Any]:
    return {
        "label": label,
        "plan": plan.name,
        "started_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git("describe", "--always", "--dirty"),
        "branch": _git("rev-parse", "--abbrev-ref", "HEAD"),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "loadavg_start": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        "knobs": dataclasses.asdict(knobs),
        "backends": backends,
        "versions": _versions(),
        "plan_detail": dataclasses.asdict(plan),
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    default_plan = "quick" if os.environ.get("BENCH_QUICK") in ("1", "true", "yes") else "full"
    parser.add_argument("--plan", choices=sorted(PLANS), default=default_plan)
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help="comma-separated sections: send, postbacks"
    )
    parser.add_argument("--backends", default=os.environ.get("BENCH_BACKENDS", "sqlite,nats"))
    parser.add_argument("--label", default=os.environ.get("BENCH_LABEL"))
    parser.add_argument(
        "--send-targets",
        default=os.environ.get("BENCH_SEND_TARGETS"),
        help="comma-separated send targets (default: the plan's)",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument(
        "--docs", type=Path, default=DOC, help="docs page to regenerate (full plan only)"
    )
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: redraw the charts and the docs table from the results folder",
    )
    parser.add_argument(
        "--work-dir", type=Path, help="logs and databases (default: <results-dir>/tmp/<label>)"
    )
    return parser


def _write_docs(args: argparse.Namespace, latest: dict[str, Any]) -> None:
    everything = [json.loads(p.read_text()) for p in sorted(args.results_dir.glob("*.json"))]
    full = [r for r in everything if r.get("meta", {}).get("plan") == "full"]
    main_result = next((r for r in full if r["meta"]["label"] == "default"), latest)
    report.update_docs(args.docs, main_result, full)
    print(f"updated {args.docs}")


def _report_only(args: argparse.Namespace) -> int:
    """Redraw every chart and the docs table from the JSON already in the results folder."""
    found = sorted(args.results_dir.glob("*.json"))
    if not found:
        print(f"no results in {args.results_dir}: run the benchmark first", file=sys.stderr)
        return 1
    latest: dict[str, Any] = {}
    for path in found:
        latest = json.loads(path.read_text())
        report.chart(latest, path.with_suffix(".png"))
        print(f"redrew {path.with_suffix('.png')}")
    if not args.no_docs:
        _write_docs(args, latest)
    return 0


def main() -> int:
    """Run the chosen sections and write everything."""
    args = _parser().parse_args()
    if args.report_only:
        return _report_only(args)
    plan = PLANS[args.plan]
    if args.send_targets:
        plan = dataclasses.replace(plan, send_targets=tuple(args.send_targets.split(",")))
    knobs = ServerKnobs.from_env()
    label = args.label or _label(plan, knobs)
    if args.send_targets and not args.label:
        label = f"{label}-compare"  # a side-by-side run does not replace the main results
    backends = [b for b in args.backends.split(",") if b]
    sections = {s for s in args.only.split(",") if s}
    results: dict[str, Any] = {"meta": _meta(plan, knobs, label, backends)}
    started = time.monotonic()
    machine = procs.MachineMeter()
    machine.begin()
    print(f"bench '{label}': plan {plan.name}, knobs {results['meta']['knobs']}", flush=True)
    # Logs and databases stay on the repository's disk (not a tmpfs that makes fsync free),
    # and are kept after the run for a look at what each process said.
    work = args.work_dir or args.results_dir / "tmp" / label
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(f"process logs in {work}", flush=True)
    if "send" in sections:
        results["send"] = send_bench.run(plan, work, knobs)
        print("send: the idempotency store's share of a send (bench.idempotency_cost)")
        results["send"]["store_cost"] = send_bench.store_cost(plan, work, backends)
    if "postbacks" in sections:
        results["postbacks"] = {
            backend: postback_bench.run(plan, work, dataclasses.replace(knobs, backend=backend))
            for backend in backends
        }
    results["meta"]["elapsed_s"] = round(time.monotonic() - started, 1)
    results["meta"]["loadavg_end"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    results["meta"]["steal_percent"] = machine.end()["steal_percent_of_all_cores"]
    results["targets"] = check(results)
    report.print_targets(results["targets"])
    out = args.results_dir / f"{label}.json"
    report.write_json(results, out)
    report.chart(results, args.results_dir / f"{label}.png")
    print(f"\nwrote {out} and {out.with_suffix('.png')} in {results['meta']['elapsed_s']} s")
    failed = failures(results)
    if failed:
        # A run that measured nothing (or measured failures) must not pass as a result.
        print(f"\nBENCH FAILED: {len(failed)} run(s) failed; the docs were not updated:")
        for name, why in failed.items():
            print(f"  {name}: {why}")
        return 1
    if plan.name == "full" and not args.no_docs:
        _write_docs(args, results)
    return 0


def failures(results: dict[str, Any]) -> dict[str, str]:
    """Every run of the results that failed: its process, no call completed, or errors."""
    send = results.get("send", {})
    out = {f"send {k}": v for k, v in send.get("failures", {}).items()}
    for backend, cost in send.get("store_cost", {}).items():
        if "failed" in cost:
            out[f"store cost {backend}"] = cost["failed"]
    for backend, section in results.get("postbacks", {}).items():
        out.update({f"postbacks {backend} {k}": v for k, v in section.get("failed", {}).items()})
    return out


if __name__ == "__main__":
    sys.exit(main())
