"""How much load each mode runs: the full benchmark, BENCH_QUICK=1, and the test's tiny one."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PostbackCase:
    """One fixed-rate postback run: subscribers (or a group), batch size, events/s."""

    subscribers: int
    batch: int
    rate: float
    group: bool = False

    @property
    def name(self) -> str:
        """A short id such as ``subs10-b1-r500`` or ``group3-b50-r500``."""
        who = f"group{self.subscribers}" if self.group else f"subs{self.subscribers}"
        return f"{who}-b{self.batch}-r{self.rate:g}"


@dataclass(frozen=True)
class Plan:
    """Durations, concurrency levels and cases of one benchmark mode."""

    name: str
    send_concurrency: tuple[int, ...]
    send_duration: float
    send_warmup: float
    send_repeats: int = 1
    """Rounds per concurrency level; each round runs every target once (medians reported)."""
    send_targets: tuple[str, ...] = (
        "grpc_ceiling",
        "http_ceiling",
        "igbutton_client",
        "igbutton",
        "igbutton_asyncio",
        "igbutton_inproc",
    )
    """Send targets; ``igbutton_client`` is igbutton through its AsyncClient with its
    defaults (request_id set), ``igbutton`` the same server through the raw stub without
    request_id; both run the server's defaults (uvloop); ``igbutton_asyncio``,
    ``igbutton_workers2`` (any N), ``igbutton_inproc_asyncio`` ... run igbutton with those
    knobs side by side with the plain one (BENCH_SEND_TARGETS)."""
    peer_targets: tuple[str, ...] = (
        "igbutton_client",
        "igbutton_sync",
        "peer_fbmessenger",
        "peer_pymessenger",
        "peer_aiohttp",
    )
    """Run at ``peer_concurrency`` callers (threads for the blocking libraries)."""
    peer_concurrency: int = 50
    """Callers of the peer comparison: a pool of 50 threads, or 50 tasks for asyncio."""
    store_cost_sends: int = 4000
    """Sends per concurrency of bench.idempotency_cost (the store's share of a send)."""
    throughput_batches: tuple[int, ...] = (1, 50)
    throughput_concurrency: int = 16
    postback_duration: float = 8.0
    postback_warmup: float = 1.0
    postback_cases: tuple[PostbackCase, ...] = field(default_factory=tuple)
    memory_events: int = 100_000
    memory_warmup_events: int = 5_000


FULL = Plan(
    name="full",
    send_concurrency=(1, 16, 64),
    send_duration=4.0,
    send_warmup=1.0,
    send_repeats=3,
    postback_cases=(
        PostbackCase(1, 1, 500),
        PostbackCase(10, 1, 500),
        PostbackCase(100, 1, 100),
        PostbackCase(3, 1, 500, group=True),
        PostbackCase(1, 50, 500),
        PostbackCase(10, 50, 500),
        PostbackCase(100, 50, 100),
        PostbackCase(3, 50, 500, group=True),
    ),
)

QUICK = Plan(
    name="quick",
    send_concurrency=(1, 16),
    send_duration=2.0,
    send_warmup=0.5,
    send_targets=("grpc_ceiling", "http_ceiling", "igbutton_client", "igbutton"),
    store_cost_sends=1000,
    throughput_batches=(1, 50),
    postback_duration=2.0,
    postback_warmup=0.5,
    postback_cases=(PostbackCase(10, 1, 500), PostbackCase(3, 1, 500, group=True)),
    memory_events=10_000,
    memory_warmup_events=1_000,
)

TINY = Plan(
    name="tiny",
    send_concurrency=(1,),
    send_duration=0.3,
    send_warmup=0.1,
    send_targets=("grpc_ceiling", "http_ceiling", "igbutton_client", "igbutton"),
    peer_concurrency=4,
    store_cost_sends=100,
    throughput_batches=(),
    postback_duration=0.5,
    postback_warmup=0.1,
    postback_cases=(PostbackCase(1, 1, 100),),
    memory_events=500,
    memory_warmup_events=100,
)

PLANS = {plan.name: plan for plan in (FULL, QUICK, TINY)}
