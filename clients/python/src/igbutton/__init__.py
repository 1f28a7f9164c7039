"""Python client for igbutton: send Instagram button templates, receive their postbacks.

    from igbutton import Client, PostbackButton, UrlButton

    with Client("127.0.0.1:50051") as client:
        sent = client.send_button_template(
            "1234567890", "Pick one",
            [UrlButton("Visit", "https://example.com"), PostbackButton("Yes", "ANSWER_YES")])

:class:`Client` blocks; :class:`AsyncClient` is the same API for asyncio. Errors are raised as
:class:`IgButtonError` subclasses (see :mod:`igbutton.errors`). The generated protobuf and
gRPC modules live in ``igbutton.v1``.
"""

from importlib.metadata import PackageNotFoundError, version

from igbutton._channel import DEFAULT_TARGET, Tls
from igbutton._retry import NO_RETRY, ReconnectPolicy, RetryPolicy
from igbutton._subscription import AsyncSubscription, Subscription
from igbutton.buttons import (
    HUMAN_AGENT,
    Button,
    ButtonTemplate,
    PostbackButton,
    UrlButton,
    template,
)
from igbutton.client import AsyncClient
from igbutton.errors import (
    FieldViolation,
    IgButtonError,
    InvalidRequestError,
    OutsideMessagingWindowError,
    RateLimitedError,
    UnavailableError,
)
from igbutton.group_models import DeadLetter, DeadLetterPage, Group, MessagingWindow
from igbutton.models import AckResult, Postback, SendResult, ValidationResult
from igbutton.sync_client import Client

try:
    __version__ = version("igbutton")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

__all__ = [
    "DEFAULT_TARGET",
    "HUMAN_AGENT",
    "NO_RETRY",
    "AckResult",
    "AsyncClient",
    "AsyncSubscription",
    "Button",
    "ButtonTemplate",
    "Client",
    "DeadLetter",
    "DeadLetterPage",
    "FieldViolation",
    "Group",
    "IgButtonError",
    "InvalidRequestError",
    "MessagingWindow",
    "OutsideMessagingWindowError",
    "Postback",
    "PostbackButton",
    "RateLimitedError",
    "ReconnectPolicy",
    "RetryPolicy",
    "SendResult",
    "Subscription",
    "Tls",
    "UnavailableError",
    "UrlButton",
    "ValidationResult",
    "__version__",
    "template",
]
