"""One version for everything: VERSION is the number, every package and both commands report it,
and every package carries the same Apache-2.0 licence as the repository."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.packaging.conftest import REPO, VERSION, copy_checkout

CLIENTS = REPO / "clients"
POM = {"m": "http://maven.apache.org/POM/4.0.0"}


def test_version_is_a_semantic_version() -> None:
    assert re.fullmatch(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)", VERSION)


def test_the_python_client_reads_the_same_file() -> None:
    link = CLIENTS / "python" / "VERSION"
    assert link.is_symlink(), "a copy would drift; setuptools reads it through the link"
    assert link.resolve() == (REPO / "VERSION").resolve()


def test_the_typescript_package_has_the_version() -> None:
    package = json.loads((CLIENTS / "typescript" / "package.json").read_text())
    lock = json.loads((CLIENTS / "typescript" / "package-lock.json").read_text())
    assert package["version"] == VERSION
    assert lock["version"] == VERSION
    assert lock["packages"][""]["version"] == VERSION


def test_the_java_artifact_has_the_version() -> None:
    pom = ET.parse(CLIENTS / "java" / "pom.xml").getroot()  # noqa: S314 (our own file)
    assert pom.findtext("m:version", namespaces=POM) == VERSION


def test_the_changelog_has_an_entry_for_the_version() -> None:
    changelog = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## \[{re.escape(VERSION)}\]", changelog, re.MULTILINE)


@pytest.mark.parametrize("command", ["igbutton-server", "igbutton"])
def test_both_commands_report_the_version(command: str) -> None:
    script = Path(sys.executable).with_name(command)
    done = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{command} {VERSION}\n"


@pytest.mark.parametrize("client", ["python", "go", "java", "typescript"])
def test_every_client_carries_the_licence(client: str) -> None:
    licence = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License\n                           Version 2.0, January 2004" in licence
    assert "END OF TERMS AND CONDITIONS" in licence, "the full text, not a notice"
    assert (CLIENTS / client / "LICENSE").read_text(encoding="utf-8") == licence


def test_set_version_writes_every_manifest(tmp_path: Path) -> None:
    checkout = copy_checkout(tmp_path / "checkout")
    done = subprocess.run(
        [sys.executable, str(checkout / "tools" / "set_version.py"), "1.2.3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (checkout / "VERSION").read_text() == "1.2.3\n"
    assert (checkout / "clients" / "python" / "VERSION").read_text() == "1.2.3\n"
    package = json.loads((checkout / "clients" / "typescript" / "package.json").read_text())
    lock = json.loads((checkout / "clients" / "typescript" / "package-lock.json").read_text())
    assert package["version"] == lock["version"] == lock["packages"][""]["version"] == "1.2.3"
    pom = ET.parse(checkout / "clients" / "java" / "pom.xml").getroot()  # noqa: S314
    assert pom.findtext("m:version", namespaces=POM) == "1.2.3"
    # Only the project's own version moved, not a dependency's or a plugin's.
    before = (CLIENTS / "java" / "pom.xml").read_text().count("<version>")
    after = (checkout / "clients" / "java" / "pom.xml").read_text()
    assert after.count("<version>") == before
    assert after.count("<version>1.2.3</version>") == 1
    chart = (checkout / "deploy" / "helm" / "igbutton" / "Chart.yaml").read_text()
    assert "\nversion: 1.2.3\n" in chart
    assert '\nappVersion: "1.2.3"\n' in chart
    # The lock file is untouched otherwise: same entries, same formatting elsewhere.
    assert set(lock["packages"]) == set(
        json.loads((CLIENTS / "typescript" / "package-lock.json").read_text())["packages"]
    )
