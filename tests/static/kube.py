"""Rendering and reading the Kubernetes manifests under deploy/, for the tests.

Rendering is the real kustomize (`kubectl kustomize`, built into kubectl, which is what a
user runs with `kubectl apply -k`), on a copy of deploy/ whose secrets.env files are written
by deploy/new-secrets.sh, as a user would. Nothing here talks to a cluster.

Also here: what the kubelet does with a container's `env` (secretKeyRef, the downward API,
`$(VAR)` expansion), and what a NetworkPolicy implementation decides for one connection
(ingress rules: pod and namespace selectors, ports), so the tests can ask who may reach whom.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = ("dev", "production")
# The database URL a user would give the production overlay.
PRODUCTION_DATABASE_URL = (
    "postgresql://taskmaster:s3cret@db.example.com:5432/taskmaster?sslmode=verify-full"
)
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
COMPONENT = "app.kubernetes.io/component"

Doc = dict[str, Any]


def kubectl() -> str | None:
    return shutil.which("kubectl")


def copy_deploy(dest: Path) -> Path:
    """deploy/ copied under dest (without any secrets.env of the developer's)."""
    target = dest / "deploy"
    shutil.copytree(DEPLOY, target, ignore=shutil.ignore_patterns("secrets.env"))
    return target


def new_secrets(deploy: Path, overlay: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(deploy / "new-secrets.sh"), str(deploy / "overlays" / overlay), *args],
        capture_output=True, text=True, timeout=30,
    )


def kustomize(kubectl_path: str, directory: Path) -> list[Doc]:
    result = subprocess.run(
        [kubectl_path, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def load_yaml_files(directory: Path) -> list[Doc]:
    """Every manifest in directory's YAML files, except kustomize's own files."""
    docs = []
    for path in sorted(directory.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


@dataclass
class Manifests:
    """One rendered overlay."""

    docs: list[Doc]
    namespace: str = field(init=False)

    def __post_init__(self) -> None:
        namespaces = {d["metadata"].get("namespace") for d in self.docs if d["kind"] != "Namespace"}
        assert len(namespaces) == 1, f"objects in several namespaces: {namespaces}"
        self.namespace = str(namespaces.pop())

    def of_kind(self, kind: str) -> list[Doc]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> Doc:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
        return found[0]

    def workloads(self) -> dict[str, Doc]:
        """component label -> its Deployment or StatefulSet."""
        result: dict[str, Doc] = {}
        for doc in self.docs:
            if doc["kind"] in WORKLOAD_KINDS:
                component = doc["spec"]["template"]["metadata"]["labels"][COMPONENT]
                assert component not in result, f"two workloads for {component}"
                result[component] = doc
        return result

    def pod(self, component: str) -> Doc:
        return dict(self.workloads()[component]["spec"]["template"])

    def container(self, component: str, name: str | None = None) -> Doc:
        spec = self.pod(component)["spec"]
        for container in spec["containers"] + spec.get("initContainers", []):
            if container["name"] == (name or component):
                return dict(container)
        raise AssertionError(f"{component}: no container {name or component}")

    def containers(self) -> Iterator[tuple[str, Doc, bool]]:
        """(component, container, is_init) for every container of every workload."""
        for component, workload in self.workloads().items():
            spec = workload["spec"]["template"]["spec"]
            for container in spec.get("initContainers", []):
                yield component, container, True
            for container in spec["containers"]:
                yield component, container, False

    def secrets(self) -> dict[str, dict[str, str]]:
        """Secret name -> decoded data."""
        result = {}
        for doc in self.of_kind("Secret"):
            data = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
            data.update(doc.get("stringData") or {})
            result[doc["metadata"]["name"]] = data
        return result


# ------------------------------------------------------------------------------ env


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, defined: Mapping[str, str]) -> str:
    """The kubelet's `$(VAR)` expansion: earlier variables only; `$$` is a literal `$`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return defined[name] if name in defined else match.group(0)

    return _VAR.sub(replace, value)


def resolve_env(
    container: Doc, secrets: Mapping[str, Mapping[str, str]], pod_ip: str
) -> dict[str, str]:
    """The environment the kubelet gives `container` (secret values, pod IP, expansion).

    A missing Secret or key is an AssertionError: the pod would not start.
    """
    assert not container.get("envFrom"), "envFrom hands over every key: name each one"
    env: dict[str, str] = {}
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            env[name] = expand(str(item["value"]), env)
            continue
        source = item["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            assert not ref.get("optional"), f"{name}: optional secret reference"
            assert ref["name"] in secrets, f"{name}: no Secret {ref['name']!r}"
            assert ref["key"] in secrets[ref["name"]], f"{name}: Secret has no key {ref['key']!r}"
            env[name] = secrets[ref["name"]][ref["key"]]
        elif "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "status.podIP", source
            env[name] = pod_ip
        else:
            raise AssertionError(f"{name}: unexpected valueFrom {source}")
    return env


def container_port(container: Doc, port: int | str) -> int:
    """A probe's or Service's port (a number or a port name) as the container's number."""
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    if isinstance(port, int):
        assert port in ports.values(), f"port {port} is not one of {ports}"
        return port
    assert port in ports, f"port name {port!r} is not one of {ports}"
    return int(ports[port])


# ------------------------------------------------------------------------------ network


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector: matchLabels and matchExpressions; an empty selector matches all."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: Mapping[str, str]
    ports: Mapping[str, int] = field(default_factory=dict)  # name -> container port

    @property
    def namespace_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace}


def _peer_matches(peer: Doc, policy_namespace: str, source: Pod) -> bool:
    assert "ipBlock" not in peer, "ipBlock peers are not evaluated here"
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], source.namespace_labels):
            return False
    elif source.namespace != policy_namespace:
        return False  # a podSelector alone means pods of the policy's namespace
    return "podSelector" not in peer or selector_matches(peer["podSelector"], source.labels)


def _port_matches(entry: Doc, target: Pod, port: int) -> bool:
    assert entry.get("protocol", "TCP") == "TCP"
    wanted = entry.get("port")
    if wanted is None:
        return True
    if isinstance(wanted, str):
        wanted = target.ports.get(wanted)
    end = entry.get("endPort", wanted)
    return wanted is not None and wanted <= port <= end


def ingress_allowed(policies: list[Doc], source: Pod, target: Pod, port: int) -> bool:
    """Whether a TCP connection from source to target:port is let in.

    A pod selected by no ingress policy takes everything; once selected, only what some
    rule of some selecting policy allows (rules add up).
    """
    selecting = [
        p for p in policies
        if p["metadata"].get("namespace") == target.namespace
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and selector_matches(p["spec"]["podSelector"], target.labels)
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress") or []:
            peers = rule.get("from") or []
            ports = rule.get("ports") or []
            namespace = policy["metadata"]["namespace"]
            if peers and not any(_peer_matches(peer, namespace, source) for peer in peers):
                continue
            if ports and not any(_port_matches(entry, target, port) for entry in ports):
                continue
            return True
    return False
