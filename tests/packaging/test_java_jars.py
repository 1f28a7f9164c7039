"""The Maven build of the Java client, from a clean checkout, makes the three jars Maven Central
takes: the classes (with the licence), the sources and the javadoc, the generated stubs in each."""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients.toolchains import require
from tests.packaging.conftest import VERSION, copy_checkout, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    require(["java", "mvn"], "a JDK 17 or newer and Maven 3.8 or newer")
    root = tmp_path_factory.mktemp("java")
    try:
        java = copy_checkout(root / "checkout") / "clients" / "java"
        run(["mvn", "-B", "-q", "-DskipTests", "package"], cwd=java, timeout=600)
        yield java / "target"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def names(jar: Path) -> set[str]:
    with zipfile.ZipFile(jar) as archive:
        return set(archive.namelist())


def test_the_jar_holds_the_classes_and_the_licence(target: Path) -> None:
    jar = names(target / f"igbutton-client-{VERSION}.jar")
    assert "com/igbutton/client/IgbuttonClient.class" in jar
    assert "com/igbutton/v1/SendServiceGrpc.class" in jar
    assert "META-INF/LICENSE" in jar


def test_the_sources_jar_holds_handwritten_and_generated_sources(target: Path) -> None:
    sources = names(target / f"igbutton-client-{VERSION}-sources.jar")
    assert "com/igbutton/client/IgbuttonClient.java" in sources
    assert "com/igbutton/v1/SendServiceGrpc.java" in sources


def test_the_javadoc_jar_documents_the_api(target: Path) -> None:
    javadoc = names(target / f"igbutton-client-{VERSION}-javadoc.jar")
    assert "index.html" in javadoc
    assert "com/igbutton/client/IgbuttonClient.html" in javadoc
    assert "com/igbutton/v1/SendServiceGrpc.html" in javadoc
