"""The ``igbutton`` command, run as a subprocess: help, argument errors, call errors, and the
send → tap → tail walkthrough against a real ``igbutton serve --sandbox`` process."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import pytest

from igbutton import Client
from tests.pyclient.conftest import (
    ServerProcess,
    igbutton_command,
    run_cli,
    stop_process,
)

RECIPIENT = "1234567890123456"


def test_top_level_help_lists_every_command() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("serve", "sandbox", "send", "tail", "tap", "doctor"):
        assert command in result.stdout
    assert "igbutton tap MESSAGE_ID" in result.stdout  # the walkthrough


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("igbutton ")


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("send", ["--to", "--text", "--url-button", "--postback-button", "--request-id", "--json"]),
        ("tail", ["--account", "--prefix", "--from", "--group", "--ack-deadline", "--count"]),
        ("tap", ["MESSAGE_ID", "--button", "--sandbox-url"]),
        ("doctor", ["--fix", "--account", "--addr", "--token-file"]),
        ("serve", ["--sandbox", "--ports-file", "--config"]),
        ("sandbox", ["--port", "--webhook-url"]),
    ],
)
def test_each_command_has_useful_help(command: str, expected: list[str]) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    for option in expected:
        assert option in result.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "COMMAND"),
        (["frobnicate"], "invalid choice"),
        (["send", "--to", RECIPIENT], "--text"),
        (["send", "--to", RECIPIENT, "--text", "Hi", "--url-button", "no-equals"], "TITLE=URL"),
        (["send", "--to", RECIPIENT, "--text", "Hi"], "at least one"),
        (["send", "--to", RECIPIENT, "--text", "Hi", "--tag", "urgent"], "--tag"),
        (["tail", "--from", "yesterday"], "--from"),
        (["tail", "--count", "0"], "--count"),
        (["tail", "--cert-file", "c.pem"], "--key-file"),
        (["tap"], "MESSAGE_ID"),
        (["tap", "m_1", "--button", "two"], "--button"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(args: list[str], needle: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]
    assert result.stdout == ""


def test_unreachable_server_is_one_line_and_exit_1() -> None:
    result = run_cli(
        "send", "--addr", "127.0.0.1:1", "--to", RECIPIENT, "--text", "Hi",
        "--postback-button", "Yes=Y", "--timeout", "5",
    )  # fmt: skip
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert "UNAVAILABLE" in line
    assert "is igbutton running at 127.0.0.1:1?" in line


def test_unreachable_sandbox_is_one_line_and_exit_1() -> None:
    result = run_cli("tap", "m_1", "--sandbox-url", "http://127.0.0.1:1")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert "cannot reach the sandbox" in line


def test_serve_says_where_it_listens(server_process: ServerProcess) -> None:
    log = server_process.log_path.read_text()
    assert "igbutton serve: starting" in log
    assert f"igbutton serve: listening on gRPC port {server_process.ports['grpc']}" in log


def test_invalid_send_reports_status_reason_and_violations(server_process: ServerProcess) -> None:
    result = run_cli(
        "send", "--addr", server_process.addr, "--to", RECIPIENT, "--text", "",
        "--url-button", "Visit=ftp://example.com",
        "--postback-button", "This title is far too long=P",
    )  # fmt: skip
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("igbutton send: INVALID_ARGUMENT INVALID_REQUEST:")
    for field in ("template.text", "template.buttons[0].url.url", "template.buttons[1].title"):
        assert field in line


def test_send_json_and_dry_run(server_process: ServerProcess) -> None:
    args = ["--addr", server_process.addr, "--to", RECIPIENT, "--text", "Pick one"]
    buttons = ["--url-button", "Visit=https://example.com/?a=b", "--postback-button", "Yes=Y=1"]
    dry = run_cli("send", *args, *buttons, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    body = json.loads(dry.stdout)["body"]
    assert body["message"]["attachment"]["payload"]["buttons"] == [
        {"type": "web_url", "url": "https://example.com/?a=b", "title": "Visit"},
        {"type": "postback", "payload": "Y=1", "title": "Yes"},
    ]
    sent = run_cli("send", *args, *buttons, "--json", "--request-id", "req-1")
    assert sent.returncode == 0, sent.stderr
    out = json.loads(sent.stdout)
    assert out["request_id"] == "req-1"
    assert out["recipient_id"] == RECIPIENT
    assert out["message_id"]


class LineReader:
    """Reads a pipe's lines on a thread, so a test can wait for one with a deadline."""

    def __init__(self, pipe: IO[str]) -> None:
        self._pipe = pipe
        self._lines: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        for line in self._pipe:
            self._lines.put(line)

    def wait_for(self, needle: str, timeout: float = 30) -> str:
        while True:
            line = self._lines.get(timeout=timeout)
            if needle in line:
                return line

    def close(self) -> None:
        """After the process ended: drain to end of file, then close the pipe."""
        self._thread.join(timeout=15)
        self._pipe.close()


@dataclass
class TailProcess:
    process: subprocess.Popen[str]
    out: LineReader
    err: LineReader


@pytest.fixture
def tail_process(server_process: ServerProcess) -> Iterator[TailProcess]:
    """A running ``igbutton tail`` (from latest) with its stdout and stderr read by lines."""
    process = subprocess.Popen(
        [*igbutton_command(), "tail", "--addr", server_process.addr],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    tail = TailProcess(process, LineReader(process.stdout), LineReader(process.stderr))
    try:
        yield tail
    finally:
        stop_process(process)
        tail.out.close()
        tail.err.close()


def test_send_then_tap_shows_the_postback_in_a_running_tail(
    server_process: ServerProcess, tail_process: TailProcess
) -> None:
    out, err = tail_process.out, tail_process.err
    # Printed once the server fixed the start ("latest"): every later postback reaches it.
    err.wait_for("subscribed, waiting for postbacks")

    sent = run_cli(
        "send", "--addr", server_process.addr, "--to", RECIPIENT, "--text", "Pick one",
        "--url-button", "Visit=https://example.com", "--postback-button", "Yes=ANSWER_YES",
        "--json",
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    mid = json.loads(sent.stdout)["message_id"]

    tapped = run_cli("tap", mid, "--button", "2", "--sandbox-url", server_process.sandbox_url)
    assert tapped.returncode == 0, tapped.stderr
    assert "ANSWER_YES" in tapped.stdout

    event = json.loads(out.wait_for("ANSWER_YES"))
    assert event["payload"] == "ANSWER_YES"
    assert event["title"] == "Yes"
    assert event["sender_id"] == RECIPIENT
    assert event["sequence"] >= 1

    url_tap = run_cli("tap", mid, "--button", "1", "--sandbox-url", server_process.sandbox_url)
    assert url_tap.returncode == 1
    assert len(url_tap.stderr.splitlines()) == 1
    assert "button_index" in url_tap.stderr

    # Ctrl-C ends tail with a last word and the conventional code.
    tail_process.process.send_signal(signal.SIGINT)
    assert tail_process.process.wait(timeout=30) == 130
    err.wait_for("stopped after 1 postbacks")


def test_sandbox_command_runs_the_sandbox_alone() -> None:
    process = subprocess.Popen(
        [*igbutton_command(), "sandbox", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    out, err = LineReader(process.stdout), LineReader(process.stderr)
    try:
        err.wait_for("igbutton sandbox: starting")
        url = out.wait_for("sandbox listening on").split()[-1]
        assert url.startswith("http://127.0.0.1:")
        answer = run_cli("tap", "no-such-message", "--sandbox-url", url)
        assert answer.returncode == 1
        assert "(404)" in answer.stderr
    finally:
        stop_process(process)
        out.close()
        err.close()


def test_tail_in_a_group_acknowledges_after_printing(server_process: ServerProcess) -> None:
    sent = run_cli(
        "send", "--addr", server_process.addr, "--to", RECIPIENT, "--text", "Pick",
        "--postback-button", "Yes=GROUP_YES", "--json",
    )  # fmt: skip
    mid = json.loads(sent.stdout)["message_id"]
    tapped = run_cli("tap", mid, "--sandbox-url", server_process.sandbox_url)
    assert tapped.returncode == 0, tapped.stderr

    group = ["tail", "--addr", server_process.addr, "--group", "cli", "--from", "earliest"]
    first = run_cli(*group, "--count", "1", timeout=60)
    assert first.returncode == 0, first.stderr
    event = json.loads(first.stdout)
    assert event["payload"] == "GROUP_YES"
    assert event["delivery_attempt"] == 1
    assert "could not acknowledge" not in first.stderr

    # A member leaving keeps its deliveries until their deadline, so had tail not acked,
    # this ack would apply; it is reported as already acknowledged instead.
    with Client(server_process.addr) as client:
        result = client.ack("cli", [event["ack_id"]])
    assert result.applied_count == 0
    assert result.unknown_ack_ids == (event["ack_id"],)
