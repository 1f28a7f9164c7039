"""A container engine (Podman or Docker) driven through its command line, for the image's
smoke test: find one that works, get a base image, build igbutton's image with
``make docker``, run containers that are always removed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
BUILD_BASE = ROOT / "deploy" / "container" / "build-base.sh"
LOCAL_BASE = "localhost/igbutton-base:bookworm"
"""Where deploy/container/build-base.sh puts the base it builds from Debian packages."""
IMAGE = "localhost/igbutton:smoke-test"


def say(message: str) -> None:
    """A line in the test's output (make docker-test runs pytest with -s), so a CI log
    shows what was built from what, and the round trip."""
    print(f"container-test: {message}", file=sys.stderr, flush=True)


def pinned_base() -> str:
    """The Dockerfile's default BASE_IMAGE."""
    found = re.search(r"^ARG BASE_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert found, "Dockerfile has no ARG BASE_IMAGE=<default>"
    return found.group(1)


def find_engine() -> tuple[str | None, str]:
    """(the engine to use, or None; why that one or why none). CONTAINER_ENGINE (make sets
    it) wins; else podman, then docker, whichever answers ``info``."""
    wanted = os.environ.get("CONTAINER_ENGINE")
    candidates = [wanted] if wanted else ["podman", "docker"]
    problems = []
    for name in candidates:
        if shutil.which(name) is None:
            problems.append(f"{name}: not installed")
            continue
        try:
            info = subprocess.run(
                [name, "info"], capture_output=True, text=True, timeout=60, check=False
            )
        except subprocess.TimeoutExpired:
            problems.append(f"{name} info: no answer in 60 s")
            continue
        if info.returncode == 0:
            return name, f"{name} ({shutil.which(name)})"
        last = (info.stderr.strip().splitlines() or ["(no output)"])[-1]
        problems.append(f"{name} info: {last}")
    return None, "; ".join(problems)


@dataclass
class Engine:
    """One container engine's command line."""

    name: str

    @property
    def is_podman(self) -> bool:
        """Podman runs health checks from systemd timers, Docker from its daemon."""
        return Path(self.name).name == "podman"

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        """The command's stdout; fails the test with its stderr when it fails."""
        proc = subprocess.run(
            [self.name, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{self.name} {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
            )
        return proc.stdout

    def image_exists(self, ref: str) -> bool:
        """Whether the image is in local storage."""
        proc = subprocess.run(
            [self.name, "image", "inspect", ref], capture_output=True, timeout=60, check=False
        )
        return proc.returncode == 0

    def inspect(self, ref: str, kind: str = "image") -> dict[str, Any]:
        """``<engine> <kind> inspect`` as JSON."""
        data = json.loads(self.run(kind, "inspect", ref))
        assert isinstance(data, list)
        assert len(data) == 1
        item = data[0]
        assert isinstance(item, dict)
        return item

    def pull(self, ref: str) -> str | None:
        """None once pulled, else the engine's last line of error."""
        proc = subprocess.run(
            [self.name, "pull", ref], capture_output=True, text=True, timeout=600, check=False
        )
        if proc.returncode == 0:
            return None
        return (proc.stderr.strip().splitlines() or ["(no output)"])[-1]

    def base_image(self) -> str:
        """The pinned base if it is here or can be pulled; else the one built from Debian
        packages by deploy/container/build-base.sh (built now unless already there)."""
        pinned = pinned_base()
        if self.image_exists(pinned):
            say(f"base image: the pinned {pinned} (already in local storage)")
            return pinned
        problem = self.pull(pinned)
        if problem is None:
            say(f"base image: the pinned {pinned} (pulled)")
            return pinned
        say(f"the pinned base {pinned} cannot be pulled: {problem}")
        if self.image_exists(LOCAL_BASE):
            labels = self.inspect(LOCAL_BASE).get("Labels") or {}
            say(
                f"base image: {LOCAL_BASE}, an equivalent built from Debian packages by "
                f"{BUILD_BASE.relative_to(ROOT)} at {labels.get('io.igbutton.base.created')} "
                "(reused; remove it to build it again)"
            )
            return LOCAL_BASE
        say(
            f"base image: building an equivalent from Debian packages (mmdebstrap, bookworm, "
            f"python3 3.11): {BUILD_BASE.relative_to(ROOT)} {LOCAL_BASE}"
        )
        started = time.monotonic()
        subprocess.run(
            [str(BUILD_BASE), LOCAL_BASE],
            check=True,
            timeout=1200,
            env={**os.environ, "CONTAINER_ENGINE": self.name},
        )
        say(f"built {LOCAL_BASE} in {time.monotonic() - started:.0f} s")
        return LOCAL_BASE

    def build(self, base: str) -> None:
        """``make docker`` with this engine and base, tagged IMAGE."""
        say(f"make docker CONTAINER_ENGINE={self.name} BASE_IMAGE={base} IMAGE={IMAGE}")
        started = time.monotonic()
        subprocess.run(
            [
                "make",
                "--no-print-directory",
                "docker",
                f"CONTAINER_ENGINE={self.name}",
                f"BASE_IMAGE={base}",
                f"IMAGE={IMAGE}",
            ],
            cwd=ROOT,
            check=True,
            timeout=1200,
        )
        say(f"built {IMAGE} in {time.monotonic() - started:.0f} s")

    @contextmanager
    def container(self, *args: str) -> Iterator[str]:
        """``run -d`` with these arguments; the container is removed (killed if need be)
        on exit, whatever happened."""
        cid = self.run("run", "-d", *args).strip().splitlines()[-1]
        try:
            yield cid
        finally:
            subprocess.run(
                [self.name, "rm", "-f", "-t", "0", cid],
                capture_output=True,
                timeout=120,
                check=False,
            )

    def host_port(self, cid: str, port: int) -> int:
        """The 127.0.0.1 port the container's ``port``/tcp is published on."""
        out = self.run("port", cid, f"{port}/tcp")
        for line in out.splitlines():
            host, _, published = line.strip().rpartition(":")
            if host == "127.0.0.1":
                return int(published)
        raise AssertionError(f"{port}/tcp is not published on 127.0.0.1: {out!r}")

    def health(self, cid: str) -> str:
        """The container's health status; on Podman, after running the check once (Podman
        schedules checks with systemd timers, which a CI machine may not have)."""
        if self.is_podman:
            subprocess.run(
                [self.name, "healthcheck", "run", cid],
                capture_output=True,
                timeout=60,
                check=False,
            )
        state = self.inspect(cid, "container")["State"]
        health = state.get("Health") or state.get("Healthcheck") or {}
        return str(health.get("Status", ""))

    def logs(self, cid: str) -> str:
        """stdout and stderr of the container so far."""
        proc = subprocess.run(
            [self.name, "logs", cid], capture_output=True, text=True, timeout=60, check=False
        )
        return proc.stdout + proc.stderr
