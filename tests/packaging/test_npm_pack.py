"""``npm pack`` of the TypeScript client gives a package a project can use: the tarball holds the
compiled JavaScript and its .d.ts (built by ``prepack`` from a copy of the sources with no
earlier build in it), the licence and no tests; installed into a scratch project it imports as
ESM and through ``require()``, type-checks, and sends to a real igbutton on loopback."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from igbutton_server.app import App
from tests.clients.toolchains import require
from tests.packaging.conftest import REPO, VERSION, run

pytestmark = pytest.mark.slow

TS = REPO / "clients" / "typescript"
RECIPIENT = "1234567890123456"

ESM_SEND = """
import {
  createIgbuttonClient, buttonTemplate, postbackButton, newRequestId,
} from "@igbutton/client";
const ig = createIgbuttonClient(process.argv[2]);
const sent = await ig.send.sendButtonTemplate({
  recipientId: process.argv[3], requestId: newRequestId(),
  template: buttonTemplate("Pick one", postbackButton("Yes", "ANSWER_YES")),
});
console.log(JSON.stringify({ messageId: sent.messageId }));
"""

CJS_REQUIRE = """
const ig = require("@igbutton/client");
const t = ig.buttonTemplate("Pick one", ig.postbackButton("Yes", "ANSWER_YES"));
console.log(JSON.stringify({ exports: Object.keys(ig).sort(), title: t.buttons[0].title }));
"""

TYPED = """
import { buttonTemplate, postbackButton, type ErrorDetails } from "@igbutton/client";
const title: string = buttonTemplate("Pick one", postbackButton("Yes", "A")).buttons[0]!.title;
const reason: ErrorDetails["reason"] = "RATE_LIMITED";
// @ts-expect-error: the declarations are real, so a wrong call is an error
postbackButton(1, 2);
export { title, reason };
"""


@dataclass(frozen=True)
class Packed:
    files: list[str]
    project: Path


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Packed]:
    require(["node", "npm"], "Node.js 20.19+ (or 22.12+) with npm")
    root = tmp_path_factory.mktemp("npm-pack")
    try:
        if not (TS / "node_modules" / ".installed").exists():
            run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=TS, timeout=600)
        # A copy without dist/, so what is packed is what prepack built; the installed
        # node_modules is shared through a link (prepack needs only the compiler from it).
        source = root / "typescript"
        shutil.copytree(TS, source, ignore=shutil.ignore_patterns("node_modules", "dist"))
        (source / "node_modules").symlink_to(TS / "node_modules")
        out = root / "out"
        out.mkdir()
        packing = run(
            ["npm", "pack", "--json", "--loglevel=error", "--pack-destination", str(out)],
            cwd=source,
            timeout=300,
        )
        (report,) = json.loads(packing.stdout)
        tarball = out / report["filename"]
        project = root / "project"
        project.mkdir()
        (project / "package.json").write_text('{"name": "scratch", "private": true}\n')
        run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", str(tarball)],
            cwd=project,
            timeout=300,
        )
        yield Packed([f["path"] for f in report["files"]], project)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_tarball_holds_javascript_declarations_and_the_licence(packed: Packed) -> None:
    files = set(packed.files)
    for module in ("index", "client", "buttons", "errors", "gen/igbutton/v1/send_service_pb"):
        assert f"dist/src/{module}.js" in files
        assert f"dist/src/{module}.d.ts" in files
    assert {"LICENSE", "README.md", "package.json"} <= files
    assert not [f for f in files if f.startswith(("dist/test", "dist/example", "src/", "test/"))]
    assert not [f for f in files if f.endswith(".map")]


def test_the_installed_package_says_its_licence_version_and_engines(packed: Packed) -> None:
    manifest = packed.project / "node_modules" / "@igbutton" / "client" / "package.json"
    package = json.loads(manifest.read_text())
    assert package["version"] == VERSION
    assert package["license"] == "Apache-2.0"
    # require() of an ES module: unflagged from Node 20.19 and 22.12 only.
    assert package["engines"] == {"node": "^20.19.0 || >=22.12.0"}


def test_require_works_from_a_commonjs_project(packed: Packed) -> None:
    done = run(["node", "-e", CJS_REQUIRE], cwd=packed.project, timeout=60)
    out = json.loads(done.stdout)
    assert {"createIgbuttonClient", "buttonTemplate", "errorDetails", "ConnectError"} <= set(
        out["exports"]
    )
    assert out["title"] == "Yes"


def test_the_declarations_type_check_a_project(packed: Packed) -> None:
    (packed.project / "typed.ts").write_text(TYPED)
    # Strict, with the library's own declarations checked too (no skipLibCheck); Node's types
    # from the client's dev dependencies, as a user's project has its own @types/node.
    config = {
        "compilerOptions": {
            "strict": True,
            "noEmit": True,
            "module": "nodenext",
            "moduleResolution": "nodenext",
            "target": "es2022",
            "typeRoots": [str(TS / "node_modules" / "@types")],
            "types": ["node"],
        },
        "files": ["typed.ts"],
    }
    (packed.project / "tsconfig.json").write_text(json.dumps(config))
    run([str(TS / "node_modules" / ".bin" / "tsc"), "-p", "."], cwd=packed.project, timeout=120)


async def test_an_esm_project_sends_through_the_installed_package(packed: Packed, app: App) -> None:
    script = packed.project / "send.mjs"
    script.write_text(ESM_SEND)
    # A subprocess this event loop waits on, while the App serves on the same loop.
    process = await asyncio.create_subprocess_exec(
        *("node", str(script), f"http://127.0.0.1:{app.ports.grpc}", RECIPIENT),
        cwd=packed.project,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(60):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    assert app.sandbox is not None
    [record] = app.sandbox.accepted()
    assert json.loads(stdout) == {"messageId": record.message_id}
