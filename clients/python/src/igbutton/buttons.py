"""Builders for button templates that read like the domain.

    template("Pick one", UrlButton("Visit", "https://example.com"), PostbackButton("Yes", "YES"))

The builders do not check Instagram's limits themselves: igbutton checks every limit and
reports all violations at once (:class:`igbutton.errors.InvalidRequestError`), and
:meth:`igbutton.Client.validate_button_template` asks it without sending.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from igbutton.v1 import button_template_pb2

HUMAN_AGENT = "human_agent"
"""The ``HUMAN_AGENT`` message tag: a reply written by a person, allowed for 7 days."""

_TAGS: dict[str, button_template_pb2.MessageTag.ValueType] = {
    HUMAN_AGENT: button_template_pb2.MESSAGE_TAG_HUMAN_AGENT,
}


@dataclass(frozen=True)
class UrlButton:
    """A button that opens ``url`` in Instagram's in-app browser.

    ``title``: 1 to 20 characters. ``url``: an absolute http(s) URL, at most 2048 characters.
    """

    title: str
    url: str

    def to_proto(self) -> button_template_pb2.Button:
        """The ``igbutton.v1.Button`` message."""
        return button_template_pb2.Button(
            title=self.title, url=button_template_pb2.UrlAction(url=self.url)
        )


@dataclass(frozen=True)
class PostbackButton:
    """A button that sends a postback carrying ``payload`` back to subscribers when tapped.

    ``title``: 1 to 20 characters. ``payload``: 1 to 1000 characters, returned verbatim.
    """

    title: str
    payload: str

    def to_proto(self) -> button_template_pb2.Button:
        """The ``igbutton.v1.Button`` message."""
        return button_template_pb2.Button(
            title=self.title, postback=button_template_pb2.PostbackAction(payload=self.payload)
        )


Button = UrlButton | PostbackButton
"""Either kind of button."""


@dataclass(frozen=True)
class ButtonTemplate:
    """A text (1 to 640 characters) shown above one to three buttons."""

    text: str
    buttons: tuple[Button, ...] = ()

    def with_button(self, button: Button) -> ButtonTemplate:
        """A copy with ``button`` added at the end."""
        return ButtonTemplate(self.text, (*self.buttons, button))

    def to_proto(self) -> button_template_pb2.ButtonTemplate:
        """The ``igbutton.v1.ButtonTemplate`` message."""
        return button_template_pb2.ButtonTemplate(
            text=self.text, buttons=[b.to_proto() for b in self.buttons]
        )


def template(text: str, *buttons: Button) -> ButtonTemplate:
    """A button template: ``template("Pick one", UrlButton(...), PostbackButton(...))``."""
    return ButtonTemplate(text, tuple(buttons))


def as_template(
    text_or_template: str | ButtonTemplate, buttons: Iterable[Button]
) -> ButtonTemplate:
    """Combine the two ways a caller may give a template: a text plus buttons, or a template
    (to which any extra buttons are appended)."""
    extra = tuple(buttons)
    for button in extra:
        if not isinstance(button, UrlButton | PostbackButton):
            raise TypeError(f"a button must be a UrlButton or a PostbackButton, not {button!r}")
    if isinstance(text_or_template, ButtonTemplate):
        return ButtonTemplate(text_or_template.text, (*text_or_template.buttons, *extra))
    if isinstance(text_or_template, str):
        return ButtonTemplate(text_or_template, extra)
    raise TypeError(f"expected a text or a ButtonTemplate, not {text_or_template!r}")


def tag_value(tag: str | None) -> button_template_pb2.MessageTag.ValueType:
    """The proto enum value for a tag given as ``"human_agent"``, ``"HUMAN_AGENT"`` or
    ``"human-agent"``; ``None`` means no tag."""
    if tag is None:
        return button_template_pb2.MESSAGE_TAG_UNSPECIFIED
    key = tag.strip().lower().replace("-", "_")
    try:
        return _TAGS[key]
    except KeyError:
        known = ", ".join(sorted(_TAGS))
        raise ValueError(f"unknown message tag {tag!r}; known tags: {known}") from None
