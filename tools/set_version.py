"""Write one version into every file that must spell it out: ``python tools/set_version.py X.Y.Z``.

VERSION is the source (both Python packages read it; the server pins ``igbutton==VERSION``).
npm, Maven and Helm cannot read a file, so their manifests get the number written here, and
tests/packaging/test_versions.py and tests/deploy/test_helm_chart.py fail when one disagrees.
The Go module has no version in a file: its release is the tag ``clients/go/vX.Y.Z``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)")


def _replace_once(path: Path, pattern: str, replacement: str) -> None:
    text = path.read_text(encoding="utf-8")
    new, count = re.subn(pattern, replacement, text, count=1, flags=re.MULTILINE)
    if count != 1:
        raise SystemExit(f"{path}: no match for {pattern!r}")
    path.write_text(new, encoding="utf-8")


def _set_npm(directory: Path, version: str) -> None:
    for name in ("package.json", "package-lock.json"):
        path = directory / name
        data = json.loads(path.read_text(encoding="utf-8"))
        data["version"] = version
        if name == "package-lock.json":
            data["packages"][""]["version"] = version
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def set_version(root: Path, version: str) -> None:
    """Write ``version`` into VERSION, package.json (and its lock), pom.xml and Chart.yaml."""
    if not SEMVER.fullmatch(version):
        raise SystemExit(f"not a version X.Y.Z: {version!r}")
    (root / "VERSION").write_text(version + "\n", encoding="utf-8")
    _set_npm(root / "clients" / "typescript", version)
    # The project's own <version>: the first one, right after its artifactId.
    _replace_once(
        root / "clients" / "java" / "pom.xml",
        r"(<artifactId>igbutton-client</artifactId>\s*<version>)[^<]*(</version>)",
        rf"\g<1>{version}\g<2>",
    )
    chart = root / "deploy" / "helm" / "igbutton" / "Chart.yaml"
    _replace_once(chart, r"^version: .*$", f"version: {version}")
    _replace_once(chart, r"^appVersion: .*$", f'appVersion: "{version}"')


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python tools/set_version.py X.Y.Z")
    set_version(ROOT, sys.argv[1])
