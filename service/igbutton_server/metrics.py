"""Every Prometheus metric igbutton exports, defined once so names and labels stay consistent.

Label values are bounded sets (method names, status codes, Graph error codes, configured
account ids); nothing a caller controls freely becomes a label, and no token ever does.
Group labels are store group keys (``[<scope>/]<name>``) of groups that exist: each scope
holds at most ``postbacks.max_groups_per_caller`` groups, and a group's series are removed
with it (``forget_group``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:  # storage imports this module
    from igbutton_server.storage.groups import GroupDetails

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# --- gRPC API ---
RPCS = Counter(
    "igbutton_rpcs_total", "gRPC calls handled, by method and final status.", ["method", "code"]
)
RPC_LATENCY = Histogram(
    "igbutton_rpc_duration_seconds",
    "Time from a unary call's start to its answer (streams: until the stream ends).",
    ["method"],
    buckets=_LATENCY_BUCKETS,
)

# --- Graph API ---
GRAPH_CALLS = Counter(
    "igbutton_graph_calls_total",
    "HTTP attempts to the Graph API, by outcome (ok, graph_error, http_error, timeout, "
    "connect_error, disconnected) and Graph error code ('' when none).",
    ["outcome", "graph_code"],
)
GRAPH_LATENCY = Histogram(
    "igbutton_graph_call_duration_seconds",
    "Duration of one HTTP attempt to the Graph API.",
    ["outcome"],
    buckets=_LATENCY_BUCKETS,
)
GRAPH_RETRIES = Counter(
    "igbutton_graph_retries_total", "Graph API attempts repeated after a safe failure.", ["reason"]
)
RATE_LIMIT_WAITS = Histogram(
    "igbutton_rate_limit_wait_seconds",
    "Time a send waited for its account's rate limiter.",
    ["account"],
    buckets=(0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
)
RATE_LIMIT_REJECTIONS = Counter(
    "igbutton_rate_limit_rejections_total",
    "Sends refused because the wait would not fit the caller's deadline.",
    ["account"],
)
APP_USAGE = Gauge(
    "igbutton_graph_app_usage_percent",
    "Meta's X-App-Usage header, per account and field (call_count, total_cputime, total_time).",
    ["account", "field"],
)
BUSINESS_USAGE = Gauge(
    "igbutton_graph_business_usage_percent",
    "Meta's X-Business-Use-Case-Usage header, per account, business object, type and field.",
    ["account", "business_id", "type", "field"],
)
BUSINESS_REGAIN = Gauge(
    "igbutton_graph_business_regain_access_minutes",
    "estimated_time_to_regain_access from X-Business-Use-Case-Usage.",
    ["account", "business_id", "type"],
)
SENDS = Counter(
    "igbutton_sends_total",
    "SendButtonTemplate outcomes: sent, replayed (idempotent repeat), failed.",
    ["outcome"],
)

# --- Accounts ---
TOKEN_EXPIRY = Gauge(
    "igbutton_account_token_expiry_timestamp_seconds",
    "When the account's access token expires (Unix time), as Meta's last refresh answer said; "
    "absent until igbutton refreshed the token once.",
    ["account"],
)
TOKEN_REFRESHES = Counter(
    "igbutton_account_token_refreshes_total",
    "Token refreshes igbutton attempted, by result (ok; failed: retried with backoff; "
    "rejected: Graph 190, reauthorization required).",
    ["account", "result"],
)
ACCOUNT_STATUS = Gauge(
    "igbutton_account_status",
    "1 for the account's current token status (ok, expiring, reauthorization_required), "
    "0 for the others.",
    ["account", "status"],
)
TEST_DELIVERIES = Counter(
    "igbutton_webhook_test_deliveries_total",
    "Webhook test deliveries recognised, by kind (dashboard: the App Dashboard's Test button, "
    "stored as test postbacks; self_test: igbutton's own check, never stored).",
    ["kind"],
)

# --- Webhooks and postbacks ---
WEBHOOKS = Counter(
    "igbutton_webhooks_total",
    "Webhook requests by result (accepted, bad_signature, unsigned, malformed, too_large, "
    "unsupported_encoding, body_timeout, aborted, store_failed, handshake_ok, handshake_denied).",
    ["result"],
)
WEBHOOK_CONNECTIONS = Gauge("igbutton_webhook_connections", "Open connections on the webhook port.")
WEBHOOK_CONNECTIONS_CLOSED = Counter(
    "igbutton_webhook_connections_closed_total",
    "Webhook connections igbutton closed unanswered, by reason (over_limit: accepted over "
    "webhook.max_connections; header_timeout: no complete request head in time).",
    ["reason"],
)
WEBHOOK_ITEMS_SKIPPED = Counter(
    "igbutton_webhook_items_skipped_total",
    "messaging items that were not postbacks (messages, reads, reactions), by kind.",
    ["kind"],
)
POSTBACKS_STORED = Counter(
    "igbutton_postbacks_stored_total", "Postbacks appended to the log (new, not duplicates)."
)
POSTBACKS_DUPLICATE = Counter(
    "igbutton_postbacks_duplicate_total", "Postbacks Meta delivered again, recognised by mid."
)
LOG_APPEND_LATENCY = Histogram(
    "igbutton_log_append_duration_seconds",
    "Time to durably append one batch to the postback log (including group commit wait).",
    buckets=_LATENCY_BUCKETS,
)
SUBSCRIBERS = Gauge(
    "igbutton_subscribers",
    "Open postback streams, by kind (SubscribePostbacks: broadcast, group; console: the web "
    "console's live feeds).",
    ["kind"],
)
GROUPS = Gauge("igbutton_groups", "Consumer groups with at least one live member.")
UNACKED = Gauge(
    "igbutton_postbacks_unacked", "Group deliveries awaiting an ack, per group.", ["group"]
)
DEAD_LETTERED = Counter(
    "igbutton_postbacks_dead_lettered_total",
    "Group deliveries set aside after the maximum attempts, per group.",
    ["group"],
)
REDELIVERIES = Counter(
    "igbutton_postbacks_redelivered_total",
    "Group deliveries sent again (ack deadline passed or nack), per group.",
    ["group"],
)


BACKLOG = Gauge(
    "igbutton_group_backlog",
    "Postbacks to a group's accounts not yet delivered to any member, per group (set when "
    "the groups are read: every postbacks.group_metrics_interval_seconds and on GetGroup).",
    ["group"],
)
OLDEST_UNACKED_AGE = Gauge(
    "igbutton_group_oldest_unacked_age_seconds",
    "Age of a group's oldest unacknowledged postback (0: none), per group; set as "
    "igbutton_group_backlog is.",
    ["group"],
)
DEAD_LETTERS_REDRIVEN = Counter(
    "igbutton_postbacks_dead_letters_redriven_total",
    "Dead letters delivered to their group again (RedriveDeadLetters), per group.",
    ["group"],
)


def observe_group(details: GroupDetails) -> None:
    """Set a group's gauges from its details (storage.groups.GroupDetails)."""
    BACKLOG.labels(group=details.key).set(details.backlog)
    UNACKED.labels(group=details.key).set(details.unacked)
    oldest = details.oldest_unacked_ms
    age = 0.0 if oldest is None else max(time.time() - oldest / 1000, 0.0)
    OLDEST_UNACKED_AGE.labels(group=details.key).set(age)


def forget_group(group: str) -> None:
    """Remove a deleted group's series (its unacked, dead-letter, redelivery, backlog,
    age and redrive counts)."""
    for metric in (
        UNACKED,
        DEAD_LETTERED,
        REDELIVERIES,
        BACKLOG,
        OLDEST_UNACKED_AGE,
        DEAD_LETTERS_REDRIVEN,
    ):
        with contextlib.suppress(KeyError):
            metric.remove(group)


def record_usage_headers(account: str, app_usage: str | None, business_usage: str | None) -> None:
    """Export Meta's usage headers as gauges; a malformed header is logged, never raised."""
    try:
        if app_usage:
            _record_app_usage(account, app_usage)
        if business_usage:
            _record_business_usage(account, business_usage)
    except (ValueError, AttributeError, TypeError):
        log.warning("ignored a malformed Graph usage header", extra={"account": account})


def _record_app_usage(account: str, header: str) -> None:
    """X-App-Usage: one JSON object of numeric fields."""
    for field, value in json.loads(header).items():
        if isinstance(value, int | float):
            APP_USAGE.labels(account, field).set(value)


def _record_business_usage(account: str, header: str) -> None:
    """X-Business-Use-Case-Usage: a list of usage entries per business id."""
    for business_id, entries in json.loads(header).items():
        for entry in entries if isinstance(entries, list) else []:
            _record_business_entry(account, business_id, entry)


def _record_business_entry(account: str, business_id: str, entry: Any) -> None:
    kind = str(entry.get("type", ""))
    for field in ("call_count", "total_cputime", "total_time"):
        if isinstance(entry.get(field), int | float):
            BUSINESS_USAGE.labels(account, business_id, kind, field).set(entry[field])
    regain = entry.get("estimated_time_to_regain_access")
    if isinstance(regain, int | float):
        BUSINESS_REGAIN.labels(account, business_id, kind).set(regain)
