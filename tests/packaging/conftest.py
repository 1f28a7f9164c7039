"""What the packaging tests share: a clean checkout, wheels built from it, fresh venvs.

A "clean checkout" is a copy of the files git would commit (tracked and not ignored), made
without build/, *.egg-info, .venv or node_modules, so a build that only works because of a
leftover of an earlier build (or of ``pip install -e``) fails here as it would for a user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.message import Message
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VERSION = (REPO / "VERSION").read_text(encoding="utf-8").strip()


def clean_env() -> dict[str, str]:
    """The environment without anything that would leak this venv into another."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
        and not key.startswith("PIP_")
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def run(
    args: Sequence[str], cwd: Path, timeout: float = 240, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run to completion; fail the test with the command's output if it does not succeed."""
    done = subprocess.run(
        list(args),
        cwd=cwd,
        env=clean_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{' '.join(args)}\n{done.stdout}\n{done.stderr}"
    return done


def copy_checkout(dest: Path) -> Path:
    """Copy what git would commit from the working tree (symlinks kept as links) to dest."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if not source.is_symlink() and not source.exists():
            continue  # deleted in the working tree, not yet in the index
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
    return dest


@dataclass(frozen=True)
class Wheel:
    """A built wheel and its metadata."""

    path: Path

    def names(self) -> list[str]:
        with zipfile.ZipFile(self.path) as wheel:
            return wheel.namelist()

    def metadata(self) -> Message:
        with zipfile.ZipFile(self.path) as wheel:
            (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
            return Parser().parsestr(wheel.read(name).decode())


@dataclass(frozen=True)
class Wheels:
    """The server's and the client's wheels, built with ``pip wheel --no-deps``."""

    server: Wheel
    client: Wheel
    checkout: Path


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wheels]:
    root = tmp_path_factory.mktemp("packaging")
    checkout = copy_checkout(root / "checkout")
    out = root / "wheels"
    try:
        # Build isolation on (pip's default): each build gets only its build-system.requires.
        for project in (checkout / "clients" / "python", checkout):
            run(
                [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), "."],
                cwd=project,
            )
        (server,) = out.glob("igbutton_server-*.whl")
        (client,) = out.glob("igbutton-*.whl")
        yield Wheels(Wheel(server), Wheel(client), checkout)
    finally:
        shutil.rmtree(root, ignore_errors=True)
