"""Group resource names (``groups/{group}``, ``callers/{caller}/groups/{group}``) and the
store's group keys they stand for, and which groups a caller may see."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from igbutton_server.config import Caller
from igbutton_server.storage.postbacks import (
    GROUP_NAME_RE,
    GROUP_SCOPE_RE,
    Filter,
    caller_scope,
    group_key,
    split_group_key,
)


@dataclass(frozen=True)
class GroupName:
    """A group as the API names it."""

    name: str
    """The resource name."""
    group: str
    """The name subscribers use."""
    caller: str
    """The configured caller whose scope holds it ('' in open mode's shared scope)."""


class GroupNames:
    """Turns store keys into resource names and back, knowing the configured callers (a
    scope is a hash of its caller's name)."""

    def __init__(self, callers: Sequence[Caller]) -> None:
        self._callers = {caller_scope(c.name): c.name for c in callers}

    def of(self, key: str) -> GroupName:
        """The resource name of a store key. A scope no configured caller has (a caller
        since removed) is named ``scopes/{scope}/groups/{group}``."""
        scope, group = split_group_key(key)
        if scope is None:
            return GroupName(f"groups/{group}", group, "")
        caller = self._callers.get(scope)
        if caller is None:
            return GroupName(f"scopes/{scope}/groups/{group}", group, "")
        return GroupName(f"callers/{caller}/groups/{group}", group, caller)

    def key(self, name: str) -> str | None:
        """The store key a resource name stands for, or None if it is not one."""
        parts = name.split("/")
        if len(parts) == 2 and parts[0] == "groups" and GROUP_NAME_RE.match(parts[1]):
            return group_key(None, parts[1])
        if len(parts) == 4 and parts[2] == "groups" and GROUP_NAME_RE.match(parts[3]):
            if parts[0] == "callers" and parts[1]:
                return group_key(caller_scope(parts[1]), parts[3])
            if parts[0] == "scopes" and GROUP_SCOPE_RE.match(parts[1]):
                return group_key(parts[1], parts[3])
        return None


def may_see(caller: Caller | None, flt: Filter) -> bool:
    """Whether a caller may see (and operate) a group with this filter: one whose accounts
    it may all use; a group of every account needs a caller of every account."""
    if caller is None or "*" in caller.accounts:
        return True
    return bool(flt.account_ids) and flt.account_ids <= set(caller.accounts)
