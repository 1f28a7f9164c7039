"""Starting, watching and stopping the benchmark's child processes.

Servers report readiness through a ports file (igbutton's ``--ports-file``) or a line on
stdout; the orchestrator measures their CPU seconds and peak RSS from outside with psutil
and /proc, so the measurement costs the measured process nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil  # type: ignore[import-untyped, unused-ignore]

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


class ChildFailed(RuntimeError):
    """A child process exited early or did not become ready in time."""


@dataclass
class Child:
    """A started child process with its log file."""

    name: str
    popen: subprocess.Popen[str]
    log_path: Path

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.popen.pid

    def check_alive(self) -> None:
        """Raise ChildFailed with the tail of its log if the child has exited."""
        code = self.popen.poll()
        if code is not None:
            raise ChildFailed(f"{self.name} exited with {code}:\n{tail(self.log_path)}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, wait, then SIGKILL: the child is gone when this returns."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start(
    name: str,
    args: Sequence[str],
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    *,
    pipes: bool = False,
) -> Child:
    """Start a child with its stderr (and stdout unless pipes) going to log_dir/name.log.

    With pipes, stdin and stdout are line-oriented pipes the orchestrator talks over.
    """
    log_path = log_dir / f"{name}.log"
    log = log_path.open("w")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    popen = subprocess.Popen(
        list(args),
        cwd=REPO,
        env=full_env,
        stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
        stdout=subprocess.PIPE if pipes else log,
        stderr=log,
        text=True,
        start_new_session=True,  # a Ctrl-C in the terminal reaches only the orchestrator
    )
    log.close()
    return Child(name, popen, log_path)


def wait_for_file(child: Child, path: Path, timeout: float = 60.0) -> dict[str, Any]:
    """Wait until the child wrote the JSON file at path (atomically) and return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        child.check_alive()
        if path.exists():
            data: dict[str, Any] = json.loads(path.read_text())
            return data
        time.sleep(0.05)
    raise ChildFailed(f"{child.name} not ready after {timeout:.0f} s:\n{tail(child.log_path)}")


def read_event(child: Child, timeout: float) -> dict[str, Any]:
    """Read the next JSON line the child prints on stdout (its protocol with us)."""
    assert child.popen.stdout is not None
    line = _readline(child.popen.stdout, timeout)
    if line is None:
        child.check_alive()
        raise ChildFailed(f"{child.name}: no event after {timeout:.0f} s:\n{tail(child.log_path)}")
    if not line:
        child.popen.wait(5)
        child.check_alive()
        raise ChildFailed(f"{child.name} closed its stdout:\n{tail(child.log_path)}")
    event: dict[str, Any] = json.loads(line)
    return event


def expect_event(child: Child, name: str, timeout: float) -> dict[str, Any]:
    """Read events until one named name arrives."""
    deadline = time.monotonic() + timeout
    while True:
        event = read_event(child, max(0.1, deadline - time.monotonic()))
        if event.get("event") == name:
            return event


def send_command(child: Child, command: Mapping[str, Any]) -> None:
    """Write one JSON line to the child's stdin."""
    assert child.popen.stdin is not None
    child.popen.stdin.write(json.dumps(command) + "\n")
    child.popen.stdin.flush()


def _readline(stream: IO[str], timeout: float) -> str | None:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return result[0] if result else None


@contextlib.contextmanager
def running(children: list[Child]) -> Iterator[list[Child]]:
    """Stop every child in the list (in reverse) when the block ends, however it ends."""
    try:
        yield children
    finally:
        for child in reversed(children):
            child.stop()


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and its descendants (igbutton workers run under a supervisor)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@dataclass
class Meter:
    """CPU seconds and peak RSS of a process tree over a measured window.

    Peak RSS comes from the kernel's VmHWM, reset at the window's start through
    /proc/PID/clear_refs; a 50 ms sampler backs it up where the reset is not allowed.
    """

    pid: int
    _cpu_start: float = 0.0
    _t_start: float = 0.0
    _sampled_peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _hwm_reset: bool = False

    def begin(self) -> None:
        """Start the window."""
        procs = process_tree(self.pid)
        self._hwm_reset = all(_reset_hwm(p.pid) for p in procs)
        self._cpu_start = _cpu_seconds(procs)
        self._t_start = time.monotonic()
        self._sampled_peak = _rss(procs)
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def end(self) -> dict[str, Any]:
        """End the window: CPU seconds used, CPU share of one core, peak and current RSS."""
        procs = process_tree(self.pid)
        cpu = _cpu_seconds(procs) - self._cpu_start
        wall = time.monotonic() - self._t_start
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        rss = _rss(procs)
        peak = max(self._sampled_peak, rss)
        if self._hwm_reset:
            peak = max(peak, sum(_hwm(p.pid) for p in procs))
        return {
            "cpu_seconds": round(cpu, 3),
            "cpu_percent": round(100 * cpu / wall, 1) if wall > 0 else None,
            "peak_rss_mb": round(peak / 2**20, 2),
            "rss_mb": round(rss / 2**20, 2),
            "processes": len(procs),
        }

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self._sampled_peak = max(self._sampled_peak, _rss(process_tree(self.pid)))


class MachineMeter:
    """How busy all cores were over a window (ours and everyone else's work), and how much
    of their time the hypervisor took from this VM (steal)."""

    def __init__(self) -> None:
        self._busy = 0.0
        self._steal = 0.0
        self._t = 0.0

    def begin(self) -> None:
        """Start the window."""
        (self._busy, self._steal), self._t = _machine_cpu(), time.monotonic()

    def end(self) -> dict[str, Any]:
        """Busy CPU seconds, and the shares of all cores' time used and stolen, in percent
        (stolen: None where the kernel does not report it)."""
        busy, steal = _machine_cpu()
        busy, steal = busy - self._busy, steal - self._steal
        wall = time.monotonic() - self._t
        cores = psutil.cpu_count() or 1
        return {
            "cpu_seconds": round(busy, 3),
            "busy_percent_of_all_cores": round(100 * busy / (wall * cores), 1) if wall else None,
            "steal_percent_of_all_cores": (
                round(100 * steal / (wall * cores), 1) if wall and _HAS_STEAL else None
            ),
        }


_HAS_STEAL = hasattr(psutil.cpu_times(), "steal")
"""Linux reports steal time: the time the hypervisor ran something else on this VM's cores."""


def _machine_cpu() -> tuple[float, float]:
    """All cores' busy and stolen CPU seconds since boot."""
    times = psutil.cpu_times()
    steal = float(getattr(times, "steal", 0.0))
    # A core the hypervisor took ran nobody's work here; guest time is in user time already.
    idle = times.idle + getattr(times, "iowait", 0.0) + steal
    guest = getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    return float(sum(times) - idle - guest), steal


def rss_mb(pid: int) -> float:
    """Current RSS of a process tree in MiB."""
    return round(_rss(process_tree(pid)) / 2**20, 2)


def _cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def _rss(procs: list[psutil.Process]) -> int:
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def _reset_hwm(pid: int) -> bool:
    # Writing 5 resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0).
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
