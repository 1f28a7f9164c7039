"""Groups: every consumer group's numbers, a group's dead letters, redrive and purge.

Everything here goes through the GroupService servicer (``groups/api.py``) as the
logged-in admin caller: the page lists what ``ListGroups`` lists (the groups over the
caller's accounts), and a redrive or purge is ``RedriveDeadLetters`` / ``PurgeDeadLetters``
itself, so a group the caller may not see is "no group" here as over gRPC. Each change is a
POST form with the CSRF token, answered by a redirect back to the page (reloading it does
not redrive again).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web
from google.protobuf import duration_pb2

from igbutton.v1 import group_service_pb2 as pb
from igbutton_server.console.pages import NO_RPC_CONTEXT, ConsoleContext, Page, Route, as_caller
from igbutton_server.errors import api_error, reason_name
from igbutton_server.groups.api import GroupApi

DEAD_LETTERS_SHOWN = 100
"""The dead letters of one group the page lists (the oldest first, as ListDeadLetters)."""
_GROUPS_PAGE = 1000


@dataclass(frozen=True)
class GroupRow:
    """One group as the table shows it."""

    name: str
    group: str
    caller: str
    accounts: str
    payload_prefix: str
    backlog: int
    unacked: int
    redelivered: int
    dead_lettered: int
    oldest_unacked: str
    """The oldest unacknowledged delivery's age ('' when none)."""
    members: int
    position: int
    max_attempts: int
    ack_deadline: str


@dataclass(frozen=True)
class DeadLetterRow:
    """One dead letter with its postback."""

    sequence: int
    account_id: str
    sender_id: str
    title: str
    payload: str
    reason: str
    attempts: int
    dead_at: str


def _age(duration: duration_pb2.Duration) -> str:
    seconds = duration.ToMilliseconds() / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _row(group: pb.Group) -> GroupRow:
    return GroupRow(
        name=group.name,
        group=group.group,
        caller=group.caller,
        accounts=", ".join(group.account_ids) or "all",
        payload_prefix=group.payload_prefix,
        backlog=group.backlog_count,
        unacked=group.unacked_count,
        redelivered=group.redelivered_count,
        dead_lettered=group.dead_letter_count,
        oldest_unacked=_age(group.oldest_unacked_age)
        if group.HasField("oldest_unacked_age")
        else "",
        members=group.connected_member_count,
        position=group.last_delivered_sequence,
        max_attempts=group.max_delivery_attempts,
        ack_deadline=_age(group.ack_deadline),
    )


def _dead_letter(letter: pb.DeadLetter) -> DeadLetterRow:
    postback = letter.postback
    return DeadLetterRow(
        sequence=postback.sequence,
        account_id=postback.account_id,
        sender_id=postback.sender_id,
        title=postback.title,
        payload=postback.payload,
        reason=pb.DeadLetterReason.Name(letter.reason).removeprefix("DEAD_LETTER_REASON_").lower(),
        attempts=letter.delivery_attempts,
        dead_at=time.strftime(
            "%Y-%m-%d %H:%M:%S", time.localtime(letter.dead_letter_time.ToMilliseconds() / 1000)
        ),
    )


def _api(ctx: ConsoleContext) -> GroupApi:
    assert ctx.groups is not None  # the page is available only with it
    return ctx.groups


async def _groups(api: GroupApi) -> list[pb.Group]:
    groups: list[pb.Group] = []
    token = ""
    while True:
        page = await api.ListGroups(
            pb.ListGroupsRequest(page_size=_GROUPS_PAGE, page_token=token), NO_RPC_CONTEXT
        )
        groups.extend(page.groups)
        token = page.next_page_token
        if not token:
            return groups


def _problem(exc: Exception) -> str:
    """What the RPC would have answered, as a line on the page; a bug propagates."""
    error = api_error(exc)
    if error is None:
        raise exc
    return f"{error.code.name} {reason_name(error.reason)}: {error.message}"


async def _page(request: web.Request, ctx: ConsoleContext) -> web.StreamResponse:
    as_caller(request)
    api = _api(ctx)
    problem = request.query.get("problem", "")
    try:
        rows = [_row(g) for g in await _groups(api)]
    except Exception as exc:  # noqa: BLE001 - _problem re-raises what is not an ApiError
        rows, problem = [], _problem(exc)
    selected = request.query.get("group", "")
    letters: list[DeadLetterRow] | None = None
    if selected:
        try:
            answer = await api.ListDeadLetters(
                pb.ListDeadLettersRequest(parent=selected, page_size=DEAD_LETTERS_SHOWN),
                NO_RPC_CONTEXT,
            )
        except Exception as exc:  # noqa: BLE001 - _problem re-raises what is not an ApiError
            problem = _problem(exc)
        else:
            letters = [_dead_letter(d) for d in answer.dead_letters]
    return ctx.render(
        request,
        "groups.html",
        groups=rows,
        selected=selected,
        dead_letters=letters,
        shown=DEAD_LETTERS_SHOWN,
        notice=request.query.get("notice", ""),
        problem=problem,
    )


async def _form(request: web.Request) -> tuple[str, str]:
    """The posted group resource name, and the sequence ('' when none was posted)."""
    form = await request.post()
    name, sequence = form.get("name"), form.get("sequence", "")
    if not isinstance(name, str) or not name:
        raise web.HTTPBadRequest(text="the group's resource name (name) is required")
    if not isinstance(sequence, str) or not (
        sequence == "" or (sequence.isascii() and sequence.isdigit())
    ):
        raise web.HTTPBadRequest(text="sequence must be a number")
    return name, sequence


def _back(request: web.Request, name: str, query: dict[str, str]) -> web.HTTPSeeOther:
    # Post/redirect/get: reloading the page does not redrive or purge again.
    return web.HTTPSeeOther(
        request.app.router["groups"].url_for().with_query({"group": name, **query})
    )


async def _redrive(request: web.Request, ctx: ConsoleContext) -> web.StreamResponse:
    name, sequence = await _form(request)
    # One dead letter (its button), or every one of the group ("Redrive all").
    redrive = pb.RedriveDeadLettersRequest(name=name)
    if sequence:
        redrive.sequences.append(int(sequence))
    else:
        redrive.all = True
    as_caller(request)
    try:
        answer = await _api(ctx).RedriveDeadLetters(redrive, NO_RPC_CONTEXT)
    except Exception as exc:  # noqa: BLE001 - _problem re-raises what is not an ApiError
        raise _back(request, name, {"problem": _problem(exc)}) from None
    raise _back(request, name, {"notice": f"Redriven: {answer.redriven_count}"})


async def _purge(request: web.Request, ctx: ConsoleContext) -> web.StreamResponse:
    name, _ = await _form(request)
    as_caller(request)
    try:
        answer = await _api(ctx).PurgeDeadLetters(
            pb.PurgeDeadLettersRequest(name=name), NO_RPC_CONTEXT
        )
    except Exception as exc:  # noqa: BLE001 - _problem re-raises what is not an ApiError
        raise _back(request, name, {"problem": _problem(exc)}) from None
    raise _back(request, name, {"notice": f"Purged: {answer.purged_count}"})


PAGE = Page(
    slug="groups",
    title="Groups",
    order=40,
    routes=(
        Route("GET", "", _page),
        Route("POST", "/redrive", _redrive),
        Route("POST", "/purge", _purge),
    ),
    available=lambda ctx: ctx.groups is not None,
)
