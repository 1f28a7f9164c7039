"""The server's import name is igbutton_server; nothing may import a package named ``service``.

``service/`` is only the folder that holds the server's code (as ``clients/python/src`` holds the
client's). A module importing ``service`` would work from the repository root, where the folder is
a namespace package on ``sys.path``, and break once installed: these tests keep it from coming back.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_SOURCES = ("service", "tests", "bench", "clients/python/src")


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_module_imports_a_package_named_service() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for folder in _SOURCES
        for path in sorted((ROOT / folder).rglob("*.py"))
        if "service" in _imported_roots(path)
    ]
    assert offenders == []


def test_the_import_scan_sees_an_import_of_service(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from service.app import App\n")
    assert "service" in _imported_roots(module)


def test_service_is_not_importable_outside_the_checkout(tmp_path: Path) -> None:
    # From another folder only what is installed counts: the server installs igbutton_server.
    script = "import igbutton_server\nimport service\n"
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "No module named 'service'" in done.stderr
