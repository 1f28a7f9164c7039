"""Prometheus instruments of the postback path (one definition per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

WEBHOOK_DELIVERIES = Counter(
    "igbutton_webhook_deliveries",
    "Webhook POSTs by outcome: stored, unsigned, bad_signature, malformed, too_large, "
    "store_failed.",
    ["outcome"],
)
WEBHOOK_ITEMS_SKIPPED = Counter(
    "igbutton_webhook_items_skipped",
    "Webhook items that are not (valid) postbacks, by kind.",
    ["kind"],
)
POSTBACKS_STORED = Counter("igbutton_postbacks_stored", "Postbacks appended to the log.")
POSTBACKS_DUPLICATE = Counter(
    "igbutton_postbacks_duplicate", "Postbacks Meta delivered again, recognised by mid."
)
POSTBACKS_PRUNED = Counter("igbutton_postbacks_pruned", "Postbacks removed after the retention.")
SUBSCRIBERS = Gauge("igbutton_postback_subscribers", "Open SubscribePostbacks streams.", ["kind"])
DELIVERED = Counter(
    "igbutton_postbacks_delivered", "Postbacks written to subscriber streams.", ["kind"]
)
