"""The Helm chart (deploy/helm/igbutton) lints, renders and is what igbutton needs.

Rendered with its default values (one replica on SQLite, sandbox) and with
ci/nats-3-replicas-values.yaml (three replicas on NATS, real accounts, callers, secrets,
ingress, ServiceMonitor, egress policy), every manifest is validated against the Kubernetes API
schemas (kubernetes-validate bundles them, so nothing is downloaded; strict: unknown fields fail)
for the oldest and newest Kubernetes we claim. The ConfigMap is fed to the real Settings, and
ports, probes, selectors, secrets and volumes are cross-checked against it. A broken template
or a value the schema refuses makes helm fail, and these tests see it.

helm is built into tools/bin by ``make test`` (pinned in the Makefile); without it these tests
are skipped, or fail with IGBUTTON_REQUIRE_TOOLCHAINS=1 (as in CI).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from igbutton_server.config import Settings
from tests.deploy.settings_env import port_of, settings_from_env

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "igbutton"
NATS_VALUES = CHART / "ci" / "nats-3-replicas-values.yaml"
SECRETS_DIR = "/run/secrets/igbutton"
KUBERNETES_VERSIONS = ("1.29", "1.37")
# Not in the Kubernetes API: checked by hand below.
CUSTOM_KINDS = {"ServiceMonitor"}
VALUES = {"default": None, "nats-3-replicas": NATS_VALUES}

Manifest = dict[str, Any]


def helm_binary() -> str:
    pinned = ROOT / "tools" / "bin" / "helm"
    found = str(pinned) if pinned.exists() else shutil.which("helm")
    if found is not None:
        return found
    message = "helm not found in tools/bin or on PATH: `make test` builds it (needs Go)"
    if os.environ.get("IGBUTTON_REQUIRE_TOOLCHAINS") == "1":
        pytest.fail(f"{message} (IGBUTTON_REQUIRE_TOOLCHAINS=1 forbids skipping)")
    pytest.skip(message)


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check:
        assert done.returncode == 0, f"helm {' '.join(args)}\n{done.stdout}\n{done.stderr}"
    return done


def value_args(sets: Sequence[str]) -> list[str]:
    """``--set`` for each ``key=value``; ``--set-string`` for ``key:=value`` (IG IDs)."""
    args: list[str] = []
    for item in sets:
        key, string, value = item.partition(":=")
        args += ["--set-string", f"{key}={value}"] if string else ["--set", item]
    return args


def render(values: Path | None = None, sets: Sequence[str] = ()) -> list[Manifest]:
    args = ["template", "igbutton", str(CHART), "--namespace", "apps", *value_args(sets)]
    if values is not None:
        args += ["-f", str(values)]
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d is not None]


def one(docs: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module", params=list(VALUES), ids=list(VALUES))
def rendered(request: pytest.FixtureRequest) -> list[Manifest]:
    return render(VALUES[request.param])


@pytest.fixture(scope="module")
def nats_docs() -> list[Manifest]:
    return render(NATS_VALUES)


@pytest.fixture(scope="module")
def default_docs() -> list[Manifest]:
    return render()


def settings_of(docs: list[Manifest], tmp_path: Path) -> Settings:
    return settings_from_env(one(docs, "ConfigMap")["data"], SECRETS_DIR, tmp_path)


def pod_spec(docs: list[Manifest]) -> Manifest:
    spec: Manifest = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


# --- helm itself ---


@pytest.mark.parametrize("values", list(VALUES))
def test_helm_lint_passes(values: str) -> None:
    args = ["lint", "--strict", str(CHART)]
    if VALUES[values] is not None:
        args += ["-f", str(VALUES[values])]
    assert "0 chart(s) failed" in helm(*args).stdout


def test_chart_and_app_versions_are_the_repository_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = (ROOT / "VERSION").read_text().strip()
    assert (chart["version"], chart["appVersion"]) == (version, version)


def test_a_typo_in_a_template_fails_lint_and_template(tmp_path: Path) -> None:
    broken = tmp_path / "igbutton"
    shutil.copytree(CHART, broken)
    service = broken / "templates" / "service.yaml"
    text = service.read_text()
    assert "{{ .Values.ports.grpc }}" in text
    service.write_text(text.replace("{{ .Values.ports.grpc }}", "{{ .Values.ports.grpc }", 1))
    assert helm("lint", str(broken), check=False).returncode != 0
    failed = helm("template", "igbutton", str(broken), check=False)
    assert failed.returncode != 0
    assert "service.yaml" in failed.stderr


def test_a_manifest_that_breaks_the_schema_fails_validation() -> None:
    # The validation below must be able to fail: a misspelt field in a rendered manifest.
    deployment = one(render(), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["storage.engine=postgres"], "/storage/engine"),
        (["replicaCount=3"], "/replicaCount"),  # SQLite: one writer per file
        (["accounts[0].id=17841400000000000"], "/accounts/0/id"),  # a number loses digits
        (["networkPolicy.enabeld=true"], "enabeld"),
        (["sandbox.enabled=false"], "accounts"),
        (["sandbox.enabled=false", "accounts[0].id:=1"], "webhook.appSecretKeys"),
        (["callers[0].name=billing"], "secrets.existingSecret"),
    ],
)
def test_values_igbutton_cannot_run_with_are_refused(sets: list[str], message: str) -> None:
    failed = helm("template", "igbutton", str(CHART), *value_args(sets), check=False)
    assert failed.returncode != 0, failed.stdout
    assert message in failed.stderr


# --- the rendered manifests ---


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(rendered: list[Manifest], version: str) -> None:
    kinds = {d["kind"] for d in rendered}
    assert {"Deployment", "Service", "ConfigMap", "NetworkPolicy", "ServiceAccount"} <= kinds
    for doc in rendered:
        if doc["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_configuration_is_valid_for_igbutton(rendered: list[Manifest], tmp_path: Path) -> None:
    settings = settings_of(rendered, tmp_path)
    pod = pod_spec(rendered)
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "grpc": port_of(settings.grpc.listen),
        "webhook": settings.webhook.port,
        "ops": settings.http.port,
    }
    assert settings.grpc.listen.startswith("0.0.0.0:")
    assert settings.http.host == settings.webhook.host == "0.0.0.0"
    # The real paths of ops_http.py, on the ops port; gRPC health before them.
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ops"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "ops"}
    assert container["startupProbe"]["grpc"]["port"] == ports["grpc"]
    # SIGTERM handling must fit in the pod's grace period (preStop pause included).
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > settings.grpc.shutdown_grace_seconds + pause
    assert container["envFrom"] == [
        {"configMapRef": {"name": one(rendered, "ConfigMap")["metadata"]["name"]}}
    ]
    assert not container.get("env"), "settings belong in the ConfigMap, secrets in files"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["requests"]


def test_secret_files_named_by_the_configuration_are_mounted(
    rendered: list[Manifest],
) -> None:
    env = one(rendered, "ConfigMap")["data"]
    referenced = set(re.findall(re.escape(SECRETS_DIR) + r"/([A-Za-z0-9_.-]+)", json.dumps(env)))
    pod = pod_spec(rendered)
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    if not referenced:
        assert SECRETS_DIR not in mounts
        return
    mount = mounts[SECRETS_DIR]
    assert mount["readOnly"] is True
    assert "items" not in volumes[mount["name"]]["secret"], "every key of the Secret is a file"


def test_services_policies_and_budgets_select_the_pods(rendered: list[Manifest]) -> None:
    deployment = one(rendered, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    container_ports = {
        p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    services = [d for d in rendered if d["kind"] == "Service"]
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports
    served = {p["targetPort"] for s in services for p in s["spec"]["ports"]}
    assert served == container_ports, "each port (the ops port too) is in a Service"
    policy = one(rendered, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert {p["port"] for rule in policy["ingress"] for p in rule["ports"]} == container_ports
    for pdb in (d for d in rendered if d["kind"] == "PodDisruptionBudget"):
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert pdb["spec"]["maxUnavailable"] < deployment["spec"]["replicas"]


# --- one replica on SQLite (the defaults) ---


def test_sqlite_keeps_its_file_on_a_claim_and_replaces_pods_one_at_a_time(
    default_docs: list[Manifest], tmp_path: Path
) -> None:
    settings = settings_of(default_docs, tmp_path)
    assert settings.storage.backend == "sqlite"
    assert settings.sandbox.enabled, "the defaults are a try-out that never reaches Meta"
    deployment = one(default_docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = pod_spec(default_docs)
    claim = one(default_docs, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [
        m
        for m in pod["containers"][0]["volumeMounts"]
        if Path(m["mountPath"]) in settings.storage.sqlite_path.parents
    ]
    assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert not [d for d in default_docs if d["kind"] == "PodDisruptionBudget"]


# --- three replicas on NATS ---


def test_nats_replicas_point_at_the_cluster_and_authenticate_callers(
    nats_docs: list[Manifest], tmp_path: Path
) -> None:
    settings = settings_of(nats_docs, tmp_path)
    assert settings.storage.backend == "nats"
    assert settings.storage.nats.replicas == 3
    assert settings.storage.nats.servers == ["nats://nats.nats.svc.cluster.local:4222"]
    assert not settings.sandbox.enabled
    assert [a.id for a in settings.accounts] == ["17841400000000000"]
    assert [c.name for c in settings.callers] == ["billing"]
    assert settings.webhook.app_secrets
    deployment = one(nats_docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert not [d for d in nats_docs if d["kind"] == "PersistentVolumeClaim"]
    one(nats_docs, "PodDisruptionBudget")
    volumes = {v["name"]: v for v in pod_spec(nats_docs)["volumes"]}
    assert volumes["secrets"]["secret"]["secretName"] == "igbutton-secrets"
    image = pod_spec(nats_docs)["containers"][0]["image"]
    assert re.fullmatch(r"registry\.example\.com/igbutton@sha256:[0-9a-f]{64}", image)


def test_the_service_monitor_scrapes_the_ops_service(nats_docs: list[Manifest]) -> None:
    monitor = one(nats_docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    selector = monitor["spec"]["selector"]["matchLabels"]
    (ops,) = [
        s
        for s in nats_docs
        if s["kind"] == "Service" and selector.items() <= s["metadata"]["labels"].items()
    ]
    assert endpoint["port"] in {p["name"] for p in ops["spec"]["ports"]}
    assert {p["targetPort"] for p in ops["spec"]["ports"]} == {"ops"}


def test_the_ingress_routes_the_webhook_path_only(
    nats_docs: list[Manifest], tmp_path: Path
) -> None:
    (rule,) = one(nats_docs, "Ingress")["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["path"] == settings_of(nats_docs, tmp_path).webhook.path
    assert path["backend"]["service"]["port"] == {"name": "webhook"}
    service = one(nats_docs, "Service", path["backend"]["service"]["name"])
    assert "webhook" in {p["name"] for p in service["spec"]["ports"]}


def test_egress_allows_dns_https_and_nats(nats_docs: list[Manifest]) -> None:
    policy = one(nats_docs, "NetworkPolicy")["spec"]
    assert "Egress" in policy["policyTypes"]
    ports = {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]}
    assert ports == {(53, "UDP"), (53, "TCP"), (443, "TCP"), (4222, "TCP")}


def test_the_nats_chart_values_hold_the_replicas_igbutton_asks_for(
    nats_docs: list[Manifest],
) -> None:
    values = yaml.safe_load((CHART.parent / "nats-values.yaml").read_text())
    replicas = int(one(nats_docs, "ConfigMap")["data"]["IGBUTTON_STORAGE__NATS__REPLICAS"])
    assert values["config"]["jetstream"]["enabled"] is True
    assert values["config"]["cluster"]["enabled"] is True
    assert values["config"]["cluster"]["replicas"] >= replicas


def test_a_chart_made_secret_holds_the_keys_the_configuration_names(tmp_path: Path) -> None:
    docs = render(
        sets=[
            "sandbox.enabled=false",
            "accounts[0].id:=17841400000000000",
            "webhook.appSecretKeys[0]=app-secret",
            "secrets.create=true",
            "secrets.data.ig-token-17841400000000000=token",
            "secrets.data.app-secret=secret",
        ]
    )
    secret = one(docs, "Secret")
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert volumes["secrets"]["secret"]["secretName"] == secret["metadata"]["name"]
    env = one(docs, "ConfigMap")["data"]
    referenced = set(re.findall(re.escape(SECRETS_DIR) + r"/([A-Za-z0-9_.-]+)", json.dumps(env)))
    assert referenced == set(secret["stringData"])
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(secret, version, strict=True)
    assert settings_of(docs, tmp_path).accounts[0].id == "17841400000000000"


def test_the_pod_runs_as_the_image_user(default_docs: list[Manifest]) -> None:
    # The Dockerfile's numeric USER owns the data directory; a pod running as anyone else
    # could not write the SQLite file on its volume.
    users = re.findall(r"^USER\s+(\d+):(\d+)\s*$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert len(users) == 1, users
    uid, gid = (int(n) for n in users[0])
    pod = pod_spec(default_docs)["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (uid, gid, gid)
