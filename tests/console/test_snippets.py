"""The console's snippets say the same send in each language, whatever the strings hold."""

from __future__ import annotations

import ast
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from google.protobuf import json_format

from igbutton.v1 import button_template_pb2 as bt
from igbutton.v1 import send_service_pb2
from igbutton_server.console import snippets
from igbutton_server.console.snippets import Connection

TRICKY = 'Say "hi"\\ it\'s\nnew line $HOME `x` 👍 \u2028 end'
CONN = Connection(target="127.0.0.1:50051", tls=False, auth=True)


def _request() -> send_service_pb2.SendButtonTemplateRequest:
    return send_service_pb2.SendButtonTemplateRequest(
        account_id="17841400000000000",
        recipient_id="1254477777772919",
        tag=bt.MESSAGE_TAG_HUMAN_AGENT,
        template=bt.ButtonTemplate(
            text=TRICKY,
            buttons=[
                bt.Button(title='Yes "1"', postback=bt.PostbackAction(payload=TRICKY)),
                bt.Button(title="Go", url=bt.UrlAction(url="https://example.com/?a=1&b='2'")),
            ],
        ),
    )


def test_python_snippet_is_python_with_the_same_strings() -> None:
    code = snippets.python(_request(), CONN)
    tree = ast.parse(code)
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
    assert {TRICKY, 'Yes "1"', "https://example.com/?a=1&b='2'", "human_agent"} <= strings
    assert "IGBUTTON_TOKEN" in strings


def test_cli_and_grpcurl_split_back_into_the_same_words() -> None:
    lines = snippets.cli(_request(), CONN).split("\n")
    words = shlex.split("\n".join(line for line in lines if not line.startswith("# ")))
    assert words[words.index("--text") + 1] == TRICKY
    assert words[words.index("--postback-button") + 1] == f'Yes "1"={TRICKY}'
    assert words[words.index("--tag") + 1] == "human-agent"
    grpcurl = shlex.split(snippets.grpcurl(_request(), CONN))
    body = grpcurl[grpcurl.index("-d") + 1]
    parsed = json_format.Parse(body, send_service_pb2.SendButtonTemplateRequest())
    assert parsed == _request()
    assert "authorization: Bearer $IGBUTTON_TOKEN" in grpcurl


def test_a_title_with_an_equals_sign_is_flagged_for_the_cli() -> None:
    request = _request()
    request.template.buttons[0].title = "a=b"
    assert "cannot be given here" in snippets.cli(request, CONN)


def test_tls_is_named_in_every_snippet() -> None:
    conn = Connection(target="igbutton.internal:443", tls=True, auth=False)
    every = snippets.all_snippets(_request(), conn)
    assert "-plaintext" not in every["grpcurl"]
    assert "--tls" in every["igbutton send"]
    assert "tls=True" in every["Python"]
    assert "WithTLS" in every["Go"]
    assert '"https://igbutton.internal:443"' in every["TypeScript"]


def test_go_snippet_parses(tmp_path: Path) -> None:
    gofmt = shutil.which("gofmt")
    if gofmt is None:
        pytest.skip("gofmt not found: install Go to check the Go snippet")
    body = "\n".join("\t" + line for line in snippets.go(_request(), CONN).split("\n"))
    source = tmp_path / "main.go"
    source.write_text(f"package main\n\nfunc main() {{\n{body}\n}}\n")
    result = subprocess.run([gofmt, "-e", str(source)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_typescript_snippet_parses(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not found: install Node.js to check the TypeScript snippet")
    source = tmp_path / "snippet.mjs"  # the snippet has no type annotations: it is also JS
    source.write_text(snippets.typescript(_request(), CONN))
    result = subprocess.run(
        [node, "--check", str(source)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
