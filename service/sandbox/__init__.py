"""A local stand-in for Instagram: Graph API sends in, signed postback webhooks out.

Start a :class:`Sandbox`, point the Graph client at ``sandbox.url``, and inspect
``sandbox.received``; :meth:`Sandbox.tap` plays a person tapping a postback button.
"""

from service.sandbox.faults import Fault, FaultKind
from service.sandbox.records import RecordedSend, UnknownMessageError
from service.sandbox.server import AUTO_SIGN, Sandbox
from service.sandbox.tap import TapResult, postback_body, sign

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
