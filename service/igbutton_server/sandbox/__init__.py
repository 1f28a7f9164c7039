"""A local stand-in for Instagram: Graph API sends in, signed postback webhooks out.

Start a :class:`Sandbox`, point the Graph client at ``sandbox.url``, and inspect
``sandbox.received``; :meth:`Sandbox.tap` plays a person tapping a postback button.
"""

from igbutton_server.sandbox.faults import Fault, FaultKind
from igbutton_server.sandbox.records import RecordedSend, UnknownMessageError
from igbutton_server.sandbox.server import AUTO_SIGN, Sandbox
from igbutton_server.sandbox.tap import TapResult, postback_body, sign

__all__ = [
    "AUTO_SIGN",
    "Fault",
    "FaultKind",
    "RecordedSend",
    "Sandbox",
    "TapResult",
    "UnknownMessageError",
    "postback_body",
    "sign",
]
