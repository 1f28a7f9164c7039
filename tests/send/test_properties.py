"""Property-based: what passes validation Meta accepts; what fails never reaches Meta."""

from __future__ import annotations

import json

import grpc
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from igbutton.v1 import button_template_pb2 as bt
from igbutton.v1 import send_service_pb2, send_service_pb2_grpc
from igbutton_server.config import Settings
from igbutton_server.errors import InvalidRequest
from igbutton_server.sandbox import Sandbox, graph_rules
from igbutton_server.send.translate import to_graph_request
from igbutton_server.send.validation import validate_send
from tests.send.conftest import details

# Text biased towards the limits: short, around them, and multi-byte characters.
_chars = st.characters(codec="utf-8", exclude_categories=("Cs",))


def _sized_text(limit: int) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(_chars, max_size=8),
        st.integers(limit - 2, limit + 2).flatmap(
            lambda n: st.text(_chars, min_size=max(n, 0), max_size=max(n, 0))
        ),
        st.sampled_from(["", " ", "ok", "\N{GRINNING FACE}" * limit]),
    )


_hosts = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z]{2,6}){1,2}", fullmatch=True)
_urls = st.one_of(
    st.builds(
        lambda scheme, host, path: f"{scheme}://{host}/{path}",
        st.sampled_from(["http", "https", "HTTPS", "ftp", "javascript"]),
        _hosts,
        st.text(st.characters(codec="ascii", categories=("L", "N")), max_size=30),
    ),
    st.text(_chars, max_size=40),
    st.sampled_from(["", "https://", "https:///x", "//example.com", "https://e.com:0/"]),
)

_buttons = st.one_of(
    st.builds(
        lambda title, url: bt.Button(title=title, url=bt.UrlAction(url=url)),
        _sized_text(20),
        _urls,
    ),
    st.builds(
        lambda title, payload: bt.Button(title=title, postback=bt.PostbackAction(payload=payload)),
        _sized_text(20),
        _sized_text(1000),
    ),
    st.builds(lambda title: bt.Button(title=title), _sized_text(20)),
)

_templates = st.builds(
    lambda text, buttons: bt.ButtonTemplate(text=text, buttons=buttons),
    _sized_text(640),
    st.lists(_buttons, max_size=4),
)

_requests = st.builds(
    lambda recipient, template, tag: send_service_pb2.SendButtonTemplateRequest(
        recipient_id=recipient, template=template, tag=tag
    ),
    st.one_of(st.from_regex(r"[0-9]{1,20}", fullmatch=True), st.text(_chars, max_size=70)),
    _templates,
    st.sampled_from([bt.MESSAGE_TAG_UNSPECIFIED, bt.MESSAGE_TAG_HUMAN_AGENT]),
)

# Mostly within the limits, so most examples pass validation (the edges still vary).
_ok_urls = st.builds(
    lambda scheme, host, path: f"{scheme}://{host}/{path}",
    st.sampled_from(["http", "https"]),
    _hosts,
    st.text(st.characters(codec="ascii", categories=("L", "N")), max_size=30),
)
_ok_buttons = st.one_of(
    st.builds(
        lambda title, url: bt.Button(title=title, url=bt.UrlAction(url=url)),
        st.text(_chars, min_size=1, max_size=20),
        _ok_urls,
    ),
    st.builds(
        lambda title, payload: bt.Button(title=title, postback=bt.PostbackAction(payload=payload)),
        st.text(_chars, min_size=1, max_size=20),
        st.text(_chars, min_size=1, max_size=1000),
    ),
)
_likely_valid = st.builds(
    lambda recipient, text, buttons, tag: send_service_pb2.SendButtonTemplateRequest(
        recipient_id=recipient,
        template=bt.ButtonTemplate(text=text, buttons=buttons),
        tag=tag,
    ),
    st.from_regex(r"[0-9]{1,20}", fullmatch=True),
    st.text(_chars, min_size=1, max_size=640),
    st.lists(_ok_buttons, min_size=1, max_size=3),
    st.sampled_from([bt.MESSAGE_TAG_UNSPECIFIED, bt.MESSAGE_TAG_HUMAN_AGENT]),
)

_SETTINGS = Settings.load(
    accounts=[{"id": "17841400000000000", "access_token": "property-test-token"}],
    sandbox={"enabled": True},
)


def _passes(request: send_service_pb2.SendButtonTemplateRequest) -> bool:
    try:
        validate_send(request, _SETTINGS)
    except InvalidRequest:
        return False
    return True


@settings(max_examples=200, deadline=None)
@given(st.one_of(_requests, _likely_valid))
def test_everything_that_passes_validation_meta_accepts(
    request: send_service_pb2.SendButtonTemplateRequest,
) -> None:
    """Checked against the sandbox's own rules (those of Meta's Graph API)."""
    try:
        valid = validate_send(request, _SETTINGS)
    except InvalidRequest:
        return
    graph = to_graph_request(valid, "https://graph.instagram.com", "v25.0")
    outcome = graph_rules.validate_send(json.loads(graph.body_json))
    assert isinstance(outcome, graph_rules.AcceptedTemplate), outcome


_PROPERTY = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)


@_PROPERTY
@given(request=_requests)
async def test_everything_that_fails_validation_is_rejected_before_any_http_call(
    stub: send_service_pb2_grpc.SendServiceStub,
    sandbox: Sandbox,
    request: send_service_pb2.SendButtonTemplateRequest,
) -> None:
    assume(not _passes(request))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SendButtonTemplate(request, timeout=10)
    got = details(caught.value)
    assert got.code == grpc.StatusCode.INVALID_ARGUMENT
    assert got.violations
    assert sandbox.received == []


@_PROPERTY
@given(request=_likely_valid)
async def test_everything_that_passes_validation_is_sent_and_accepted(
    stub: send_service_pb2_grpc.SendServiceStub,
    sandbox: Sandbox,
    request: send_service_pb2.SendButtonTemplateRequest,
) -> None:
    assume(_passes(request))
    sandbox.reset()
    reply = await stub.SendButtonTemplate(request, timeout=10)
    [received] = sandbox.received
    assert received.accepted
    assert received.message_id == reply.message_id
