"""The Dockerfile read as text, without a container engine (so in every `make test`): what
the smoke test proves of the built image must also hold of the file it is built from."""

from __future__ import annotations

import json
import re

from tests.container.engine import DOCKERFILE, ROOT


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines = [
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")
    ]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    found = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), " ".join(rest.split())))
    return found


def _all(name: str) -> list[str]:
    return [args for word, args in _instructions() if word == name]


def test_every_stage_is_built_on_the_pinned_base_arg() -> None:
    instructions = _instructions()
    assert instructions[0][0] == "ARG", "BASE_IMAGE must be declared before the first FROM"
    default = re.fullmatch(r"BASE_IMAGE=(\S+)", instructions[0][1])
    assert default is not None, instructions[0]
    assert re.fullmatch(r"[\w./:-]+@sha256:[0-9a-f]{64}", default.group(1)), default.group(1)
    froms = _all("FROM")
    assert len(froms) == 2
    assert all(f.split()[0] == "${BASE_IMAGE}" for f in froms), froms
    # Redeclared in the final stage, so the label can name it.
    assert "BASE_IMAGE" in _all("ARG")
    assert any('org.opencontainers.image.base.name="${BASE_IMAGE}"' in lbl for lbl in _all("LABEL"))


def test_readme_names_the_pinned_digest() -> None:
    default = _instructions()[0][1]
    digest = default.rpartition("@sha256:")[2]
    assert f"@sha256:{digest[:8]}" in (ROOT / "README.md").read_text(), (
        "README's Deploying section names another base digest than the Dockerfile"
    )


def test_numeric_user_that_owns_only_the_data_directory() -> None:
    assert _all("USER") == ["10001:10001"]
    runs = " ".join(_all("RUN"))
    assert "install -d -o 10001 -g 10001 -m 0750 /var/lib/igbutton" in runs
    assert any("IGBUTTON_STORAGE__SQLITE_PATH=/var/lib/igbutton/" in env for env in _all("ENV"))
    assert _all("VOLUME") == ['["/var/lib/igbutton"]']


def test_health_check_runs_the_subcommand_and_names_no_port() -> None:
    (health,) = _all("HEALTHCHECK")
    options, _, command = health.partition(" CMD ")
    assert json.loads(command) == ["igbutton-server", "healthcheck"]
    # The subcommand reads IGBUTTON_HTTP__PORT; a port here would be the bug it replaced.
    assert not re.search(r"\d{4}", command)
    assert "--start-period=" in options


def test_the_server_is_pid_1_and_stops_on_sigterm() -> None:
    # Exec form: the server itself receives the stop signal (a shell would not pass it on).
    assert [json.loads(e) for e in _all("ENTRYPOINT")] == [["igbutton-server"]]
    assert _all("STOPSIGNAL") == ["SIGTERM"]
