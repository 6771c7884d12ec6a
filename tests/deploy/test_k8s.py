"""The Kubernetes manifests (deploy/k8s), checked without a cluster: rendered by `kubectl kustomize`,
validated against the Kubernetes 1.37 schemas (strict: an unknown field fails), and read for what
the schemas cannot know: every secret from a Secret, every variable one the services read, the
shapes the design relies on, and the network policies evaluated against the callers they must
admit and the ones they must refuse."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml
from pydantic import SecretStr

from app.settings import Settings
from deploy.local import ROOT, ManagedProcess, free_port
from tools.service.settings import ToolsSettings

K8S = ROOT / "deploy/k8s"
KUBECTL = Path(sys.executable).parent / "kubectl"
KUBERNETES_VERSION = "1.37.0"
Doc = dict[str, Any]


def render(kustomization: str) -> list[Doc]:
    rendered = subprocess.run(
        [str(KUBECTL), "kustomize", str(K8S / kustomization)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert rendered.returncode == 0, rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


@pytest.fixture(scope="module", params=["base", "overlays/production"])
def docs(request: pytest.FixtureRequest) -> list[Doc]:
    return render(request.param)


@pytest.fixture(scope="module")
def production() -> list[Doc]:
    return render("overlays/production")


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    [found] = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    return found


def pod_spec(doc: Doc) -> Doc:
    spec: Doc = doc["spec"]["template"]["spec"]
    return spec


def containers(docs: list[Doc]) -> list[tuple[str, Doc]]:
    return [
        (doc["metadata"]["name"], container)
        for doc in docs
        if doc["kind"] in {"Deployment", "StatefulSet", "Job"}
        for container in pod_spec(doc)["containers"]
    ]


def env_of(container: Doc) -> dict[str, Doc]:
    return {item["name"]: item for item in container.get("env", [])}


def test_manifests_render_and_validate_against_the_kubernetes_schemas(docs: list[Doc]) -> None:
    kinds = sorted({doc["kind"] for doc in docs})
    assert {"StatefulSet", "Deployment", "Job", "NetworkPolicy", "PodDisruptionBudget"} <= set(kinds)
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_is_strict() -> None:
    """A misspelt field fails validation (so the test above can fail)."""
    deployment = one(render("base"), "Deployment", "agent-service")
    pod_spec(deployment)["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/health", "port": 9081}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def secret_variables() -> set[str]:
    """Every variable holding a secret: the services' SecretStr settings, and the database URL
    (its password)."""
    names = {"DATABASE_URL", "RESTATE_IDENTITY_PUBLIC_KEYS"}
    for model in (Settings, ToolsSettings):
        for field in model.model_fields.values():
            if SecretStr in getattr(field.annotation, "__args__", (field.annotation,)):
                assert field.alias is not None
                names.add(field.alias)
    return names


def test_every_secret_comes_from_a_secret_and_no_secret_is_in_the_manifests(docs: list[Doc]) -> None:
    secrets = secret_variables()
    assert {"APPROVAL_WEBHOOK_SECRET", "OPERATOR_TOKEN", "TOOLS_API_TOKEN", "ANTHROPIC_API_KEY"} <= secrets
    seen = set()
    for owner, container in containers(docs):
        for name, item in env_of(container).items():
            if name in secrets:
                seen.add(name)
                assert "value" not in item, f"{owner}: {name} is written into the manifest"
                assert item["valueFrom"]["secretKeyRef"]["name"] == "durable-agents-secrets", (owner, name)
    assert {"DATABASE_URL", "APPROVAL_WEBHOOK_SECRET", "TOOLS_API_TOKEN", "EXPENSES_API_TOKEN"} <= seen
    assert not [doc for doc in docs if doc["kind"] == "Secret"], "secrets are created out of band"


def aliases(model: type[Settings] | type[ToolsSettings]) -> set[str]:
    return {field.alias for field in model.model_fields.values() if field.alias}


@pytest.mark.parametrize(("workload", "model"), [("agent-service", Settings), ("tools", ToolsSettings)])
def test_every_variable_given_to_a_service_is_one_it_reads(
    docs: list[Doc], workload: str, model: type[Settings] | type[ToolsSettings]
) -> None:
    [container] = pod_spec(one(docs, "Deployment", workload))["containers"]
    unknown = set(env_of(container)) - aliases(model)
    assert not unknown, f"{workload} is given variables it never reads (misspelt?): {unknown}"
    assert env_of(container)["ENV"]["value"] == "production"


def test_the_agent_service_is_replicated_probed_and_drains_before_it_is_killed(docs: list[Doc]) -> None:
    deployment = one(docs, "Deployment", "agent-service")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    spec = pod_spec(deployment)
    [container] = spec["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health", probe
    grace = float(env_of(container)["AGENT_SHUTDOWN_GRACE_SECONDS"]["value"])
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] > pre_stop + grace
    budget = one(docs, "PodDisruptionBudget", "agent-service")
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    assert 1 <= budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    for _, each in containers([deployment, one(docs, "Deployment", "tools")]):
        context = each["securityContext"]
        assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"]
        assert context["capabilities"]["drop"] == ["ALL"]
    assert spec["securityContext"]["runAsNonRoot"] is True


def test_the_restate_cluster_is_three_nodes_replicating_twice_with_one_configuration(docs: list[Doc]) -> None:
    statefulset = one(docs, "StatefulSet", "restate")
    replicas = statefulset["spec"]["replicas"]
    assert replicas == 3
    headless = one(docs, "Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"]
    [container] = pod_spec(statefulset)["containers"]
    env = env_of(container)
    peers = yaml.safe_load(env["RESTATE_METADATA_CLIENT__ADDRESSES"]["value"])
    service = headless["metadata"]["name"]
    assert peers == [f"http://restate-{index}.{service}:5122" for index in range(replicas)]
    assert env["RESTATE_ADVERTISED_ADDRESS"]["value"] == f"http://$(POD_NAME).{service}:5122"

    [config_map] = [doc for doc in docs if doc["metadata"]["name"].startswith("restate-config")]
    shipped = config_map["data"]["restate.toml"]
    assert shipped == (K8S / "base/restate.toml").read_text()
    config = tomllib.loads(shipped)
    assert config["default-replication"] == 2 and config["auto-provision"] is False
    assert set(config["roles"]) >= {"metadata-server", "log-server", "worker"}
    assert config["bifrost"]["default-provider"] == "replicated"
    assert config["worker"]["invoker"]["request-identity-private-key-pem-file"].startswith(
        next(mount["mountPath"] for mount in container["volumeMounts"] if mount["name"] == "identity")
    )

    provision = pod_spec(one(docs, "Job", "restate-provision"))["containers"][0]["command"]
    assert provision[provision.index("--replication") + 1] == "2"
    assert provision[provision.index("--address") + 1].split(",") == peers
    assert one(docs, "PodDisruptionBudget", "restate")["spec"]["maxUnavailable"] == 1


def test_the_registration_job_registers_the_agent_services_endpoint(docs: list[Doc]) -> None:
    args = pod_spec(one(docs, "Job", "register-deployment"))["containers"][0]["args"]
    body = yaml.safe_load(args[args.index("--json") + 1])
    ports = {port["name"]: port["port"] for port in one(docs, "Service", "agent-service")["spec"]["ports"]}
    assert body == {"uri": f"http://agent-service:{ports['restate-endpoint']}"}
    assert "force" not in body, "a release is never registered over the old one"
    assert args[-1] == f"http://restate:{9070}/deployments"


# --- network policies, evaluated ------------------------------------------------------------------


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    wanted = selector.get("matchLabels", {})
    return all(labels.get(key) == value for key, value in wanted.items())


def may_reach(docs: list[Doc], source: dict[str, str], target: dict[str, str], port: int) -> bool:
    """NetworkPolicy semantics within one namespace: a pod selected by any ingress policy admits
    only what one of their rules allows (ports and peers; a missing list allows all)."""
    policies = [doc["spec"] for doc in docs if doc["kind"] == "NetworkPolicy"]
    applying = [spec for spec in policies if selects(spec["podSelector"], target)]
    if not applying:
        return True
    for spec in applying:
        for rule in spec.get("ingress", []):
            ports = [item["port"] for item in rule.get("ports", [])]
            peers = rule.get("from")
            if ports and port not in ports:
                continue
            if peers is None or any(selects(peer["podSelector"], source) for peer in peers):
                return True
    return False


def pod(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "durable-agents"}


STRANGER = {"app": "something-else"}
RESTATE, AGENTS, TOOLS = pod("restate"), pod("agent-service"), pod("tools")
PORTAL = {"app": "expense-portal", "durable-agents.dev/expense-portal": "true"}


def test_only_restate_reaches_the_agent_endpoint_and_only_the_agents_reach_the_tools(docs: list[Doc]) -> None:
    assert may_reach(docs, RESTATE, AGENTS, 9080)
    assert may_reach(docs, AGENTS, TOOLS, 9090)
    assert may_reach(docs, PORTAL, TOOLS, 9090)
    assert may_reach(docs, STRANGER, AGENTS, 9081), "the approvals surface is public (it checks credentials)"
    assert may_reach(docs, STRANGER, RESTATE, 8080), "the ingress is public (tasks are started there)"
    assert may_reach(docs, AGENTS, RESTATE, 9070)
    assert may_reach(docs, RESTATE, RESTATE, 5122)
    assert may_reach(docs, pod("restate-provision"), RESTATE, 5122)
    assert may_reach(docs, pod("register-deployment"), RESTATE, 9070)


@pytest.mark.parametrize(
    ("source", "target", "port"),
    [
        (STRANGER, AGENTS, 9080),  # call the agent endpoint directly, around Restate
        (TOOLS, AGENTS, 9080),  # a compromised tool service driving tasks
        (STRANGER, TOOLS, 9090),  # post to the ledger from anywhere in the cluster
        (RESTATE, TOOLS, 9090),
        (PORTAL, AGENTS, 9080),
        (STRANGER, RESTATE, 9070),  # register a deployment of one's own, purge invocations
        (TOOLS, RESTATE, 9070),
        (STRANGER, RESTATE, 5122),  # join the cluster, read its log
        (AGENTS, RESTATE, 5122),
        (STRANGER, AGENTS, 2222),  # any other port of a pod
    ],
)
def test_the_network_policies_refuse_everyone_else(
    docs: list[Doc], source: dict[str, str], target: dict[str, str], port: int
) -> None:
    assert not may_reach(docs, source, target, port)


def test_production_names_its_namespace_image_and_snapshot_bucket(production: list[Doc]) -> None:
    namespaced = [doc for doc in production if doc["kind"] != "Namespace"]
    assert {doc["metadata"].get("namespace") for doc in namespaced} == {"durable-agents"}
    images = {container["image"] for _, container in containers(production)}
    assert not [image for image in images if "example/durable-agents" in image or ":" not in image]
    [restate] = pod_spec(one(production, "StatefulSet", "restate"))["containers"]
    assert env_of(restate)["RESTATE_WORKER__SNAPSHOTS__DESTINATION"]["value"].startswith("s3://")


# --- the manifest's configuration starts the services ---------------------------------------------


def manifest_env(container: Doc, secrets: dict[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet would build it, the Secret given here."""
    env: dict[str, str] = {}
    for name, item in env_of(container).items():
        if "value" in item:
            env[name] = item["value"]
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        if ref["key"] in secrets:
            env[name] = secrets[ref["key"]]
        else:
            assert ref.get("optional"), f"{name}: the Secret lacks {ref['key']}"
    return env


@pytest.mark.parametrize("workload", ["agent-service", "tools"])
def test_the_manifests_configuration_starts_the_service_in_production_mode(
    tmp_path: Path, workload: str
) -> None:
    """With the Deployment's own variables (the Secret filled in, the ports moved to free ones:
    9080 and friends may be taken here), the service passes its production checks and serves."""
    from deploy.request_identity import generate

    _, public_key = generate(tmp_path / "keys")
    secrets = {
        name: f"{name.lower()}-{'x' * 40}"
        for name in ("APPROVAL_WEBHOOK_SECRET", "OPERATOR_TOKEN", "TOOLS_API_TOKEN", "EXPENSES_API_TOKEN")
    }
    secrets |= {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'agents.db'}",
        "RESTATE_IDENTITY_PUBLIC_KEYS": public_key,
    }
    [container] = pod_spec(one(render("base"), "Deployment", workload))["containers"]
    health_port = free_port()
    ports = (
        {"APP_PORT": str(free_port()), "APPROVALS_PORT": str(health_port)}
        if workload == "agent-service"
        else {"TOOLS_PORT": str(health_port)}
    )
    process = ManagedProcess(
        name=workload,
        argv=[sys.executable, *container["args"][1:]],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **manifest_env(container, secrets), **ports},
        log_path=tmp_path / f"{workload}.log",
        ready=lambda: httpx.get(f"http://127.0.0.1:{health_port}/health", timeout=1).status_code == 200,
        cwd=tmp_path,
    )
    try:
        process.start(timeout=60)
        assert process.alive()
    finally:
        process.stop()
