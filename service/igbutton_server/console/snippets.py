"""The same send in every form a user might run it: ``igbutton send``, grpcurl, Python,
Go and TypeScript, each using the client library of that language as its README shows.

Strings are written as JSON string literals (``json.dumps`` without ASCII escaping, and
invisible characters escaped), which Python, Go and TypeScript all read as the same
string; shell words are quoted with :func:`shlex.quote`.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from google.protobuf import json_format

from igbutton.v1 import button_template_pb2, send_service_pb2

SendRequest = send_service_pb2.SendButtonTemplateRequest


@dataclass(frozen=True)
class Connection:
    """How a caller reaches this igbutton's gRPC port."""

    target: str
    """host:port"""
    tls: bool
    auth: bool
    """Whether a caller token is needed (read from ``$IGBUTTON_TOKEN`` in every snippet)."""


def _lit(text: str) -> str:
    literal = json.dumps(text, ensure_ascii=False)
    # Invisible characters (U+2028, zero-width ones) escaped, so a copy keeps them and no
    # editor breaks the line; \uXXXX means the same in all three (astral ones stay as
    # they are: Go has no surrogate escapes).
    return "".join(c if c.isprintable() or ord(c) > 0xFFFF else f"\\u{ord(c):04x}" for c in literal)


def _human_agent(request: SendRequest) -> bool:
    return request.tag == button_template_pb2.MESSAGE_TAG_HUMAN_AGENT


def cli(request: SendRequest, conn: Connection) -> str:
    """The ``igbutton send`` command line."""
    words = ["igbutton", "send", "--addr", conn.target, "--to", request.recipient_id]
    words += ["--text", request.template.text]
    for button in request.template.buttons:
        if button.WhichOneof("action") == "url":
            words += ["--url-button", f"{button.title}={button.url.url}"]
        else:
            words += ["--postback-button", f"{button.title}={button.postback.payload}"]
    if request.account_id:
        words += ["--account", request.account_id]
    if _human_agent(request):
        words += ["--tag", "human-agent"]
    if conn.tls:
        words.append("--tls")
    line = " ".join(shlex.quote(word) for word in words)
    notes = []
    if conn.auth:
        notes.append("# the caller token from $IGBUTTON_TOKEN")
    if any("=" in b.title for b in request.template.buttons):
        notes.append("# a title with '=' cannot be given here (TITLE=VALUE): use another form")
    return "\n".join([*notes, line])


def grpcurl(request: SendRequest, conn: Connection) -> str:
    """The grpcurl command (the server has reflection)."""
    body = json_format.MessageToJson(request, indent=None, ensure_ascii=False)
    words = ["grpcurl"] if conn.tls else ["grpcurl", "-plaintext"]
    # Double quotes, so the shell expands the variable.
    header = ' -H "authorization: Bearer $IGBUTTON_TOKEN"' if conn.auth else ""
    rest = ["-d", body, conn.target, "igbutton.v1.SendService/SendButtonTemplate"]
    return " ".join(words) + header + " " + " ".join(shlex.quote(w) for w in rest)


def python(request: SendRequest, conn: Connection) -> str:
    """The Python client (``igbutton``)."""
    buttons = [
        f"UrlButton({_lit(b.title)}, {_lit(b.url.url)})"
        if b.WhichOneof("action") == "url"
        else f"PostbackButton({_lit(b.title)}, {_lit(b.postback.payload)})"
        for b in request.template.buttons
    ]
    options = ', token=os.environ["IGBUTTON_TOKEN"]' if conn.auth else ""
    options += ", tls=True" if conn.tls else ""
    lines = ["import os", ""] if conn.auth else []
    lines += [
        "from igbutton import Client, PostbackButton, UrlButton",
        "",
        f"with Client({_lit(conn.target)}{options}) as client:",
        "    sent = client.send_button_template(",
        f"        {_lit(request.recipient_id)},",
        f"        {_lit(request.template.text)},",
        "        [",
        *(f"            {b}," for b in buttons),
        "        ],",
    ]
    if request.account_id:
        lines.append(f"        account_id={_lit(request.account_id)},")
    if _human_agent(request):
        lines.append('        tag="human_agent",')
    lines += ["    )", "    print(sent.message_id)"]
    return "\n".join(lines)


def go(request: SendRequest, conn: Connection) -> str:
    """The Go client (``clients/go/igbutton``)."""
    buttons = [
        f"\t\t\tigbutton.UrlButton({_lit(b.title)}, {_lit(b.url.url)}),"
        if b.WhichOneof("action") == "url"
        else f"\t\t\tigbutton.PostbackButton({_lit(b.title)}, {_lit(b.postback.payload)}),"
        for b in request.template.buttons
    ]
    option = ", igbutton.WithTLS(&tls.Config{})" if conn.tls else ""
    option += ', igbutton.WithBearerToken(os.Getenv("IGBUTTON_TOKEN"))' if conn.auth else ""
    fields = []
    if request.account_id:
        fields.append(f"\t\tAccountId:   {_lit(request.account_id)},")
    fields += [
        f"\t\tRecipientId: {_lit(request.recipient_id)},",
        "\t\tRequestId:   igbutton.NewRequestID(),",
    ]
    if _human_agent(request):
        fields.append("\t\tTag:         igbuttonv1.MessageTag_MESSAGE_TAG_HUMAN_AGENT,")
    return "\n".join(
        [
            f"client, err := igbutton.Dial({_lit(conn.target)}{option})",
            "if err != nil {",
            "\tlog.Fatal(err)",
            "}",
            "defer client.Close()",
            "resp, err := client.Send.SendButtonTemplate(ctx,",
            "\t&igbuttonv1.SendButtonTemplateRequest{",
            *fields,
            f"\t\tTemplate: igbutton.Template({_lit(request.template.text)},",
            *buttons,
            "\t\t),",
            "\t})",
            "if err != nil {",
            "\tlog.Fatal(err)",
            "}",
            "fmt.Println(resp.GetMessageId())",
        ]
    )


def typescript(request: SendRequest, conn: Connection) -> str:
    """The TypeScript client (``@igbutton/client``)."""
    buttons = [
        f"    urlButton({_lit(b.title)}, {_lit(b.url.url)}),"
        if b.WhichOneof("action") == "url"
        else f"    postbackButton({_lit(b.title)}, {_lit(b.postback.payload)}),"
        for b in request.template.buttons
    ]
    names = ["buttonTemplate", "createIgbuttonClient", "newRequestId", "postbackButton"]
    names.append("urlButton")
    if _human_agent(request):
        names.insert(0, "MessageTag")
    options = ", { bearerToken: process.env.IGBUTTON_TOKEN }" if conn.auth else ""
    address = ("https://" if conn.tls else "http://") + conn.target
    fields = []
    if request.account_id:
        fields.append(f"  accountId: {_lit(request.account_id)},")
    fields += [f"  recipientId: {_lit(request.recipient_id)},", "  requestId: newRequestId(),"]
    if _human_agent(request):
        fields.append("  tag: MessageTag.HUMAN_AGENT,")
    return "\n".join(
        [
            f'import {{ {", ".join(names)} }} from "@igbutton/client";',
            "",
            f"const ig = createIgbuttonClient({_lit(address)}{options});",
            "const { messageId } = await ig.send.sendButtonTemplate({",
            *fields,
            "  template: buttonTemplate(",
            f"    {_lit(request.template.text)},",
            *buttons,
            "  ),",
            "});",
            "console.log(messageId);",
        ]
    )


def all_snippets(request: SendRequest, conn: Connection) -> dict[str, str]:
    """Every snippet, by language name."""
    return {
        "igbutton send": cli(request, conn),
        "grpcurl": grpcurl(request, conn),
        "Python": python(request, conn),
        "Go": go(request, conn),
        "TypeScript": typescript(request, conn),
    }
