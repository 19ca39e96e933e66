"""The Kubernetes manifests (deploy/k8s), checked offline as a platform team would: every
kustomization renders (kustomize 4.5.4), every object validates strictly (core kinds against
Kubernetes' schemas with kubernetes-validate, the ScaledObject with validators generated from
KEDA's CRDs, the InferenceService against the KServe SDK's types), checkov's Kubernetes checks
pass with no failure and at most two explained skips, and the hardening each check stands for is
asserted here directly too. The same pods are played with podman in tests/test_container.py.

Where the deployment tools are missing (`make deploy-tools` installs them) the module skips,
except in CI (CI set), where that is a failure (tests/deploy_tools.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.conftest import ROOT
from tests.deploy_tools import CHECKOV, KUSTOMIZE, NODE_MODELS, TOOLS, require_tools
from tests.deploy_tools import render as render_folder

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
NAMESPACE = "rnnserve"
# every kustomization a user applies (common/ is only a part of the others)
KUSTOMIZATIONS = ("base", "overlays/release", "overlays/gpu", "overlays/keda", "kserve")
RELEASED = ("overlays/release", "overlays/gpu", "overlays/keda", "kserve")
CLUSTER_SCOPED = {"Namespace"}
MAX_SKIPS = 2

require_tools()


def render(kustomization: str) -> list[dict[str, Any]]:
    return render_folder(K8S / kustomization)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {k: render(k) for k in KUSTOMIZATIONS}


def only(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in documents if d["kind"] == kind]
    return found


def pod_specs(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pod specs the cluster would run: a Deployment's template, a KServe predictor."""
    specs = [d["spec"]["template"]["spec"] for d in documents if d["kind"] == "Deployment"]
    specs += [d["spec"]["predictor"] for d in documents if d["kind"] == "InferenceService"]
    return specs


def external(script: list[str], documents: list[dict[str, Any]], **env: str) -> list[str]:
    proc = subprocess.run(
        script,
        input=json.dumps(documents),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    problems: list[str] = json.loads(proc.stdout)
    return problems


def is_core(api_version: str) -> bool:
    """Kubernetes' own groups (v1, apps, policy, autoscaling, *.k8s.io), not a CRD's."""
    group = api_version.split("/")[0] if "/" in api_version else ""
    return "." not in group or group.endswith(".k8s.io")


def validate_all(documents: list[dict[str, Any]]) -> list[str]:
    """Every object against its schema; the problems found."""
    problems = []
    core = [d for d in documents if is_core(d["apiVersion"])]
    for doc in core:
        try:
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{doc['kind']} {doc['metadata']['name']}: {exc}")
    keda = [d for d in documents if d["apiVersion"].startswith("keda.sh/")]
    if keda:
        problems += external(
            ["node", str(ROOT / "tests" / "keda_validate.mjs")], keda, MODELS=str(NODE_MODELS)
        )
    kserve = [d for d in documents if d["apiVersion"].startswith("serving.kserve.io/")]
    if kserve:  # a process of its own: kserve and tritonclient.grpc cannot share one
        problems += external([sys.executable, "-m", "tests.kserve_schema"], kserve)
    unchecked = [d["kind"] for d in documents if d not in core + keda + kserve]
    assert not unchecked, f"no schema checks these kinds: {unchecked}"
    return problems


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_object_validates_strictly(
    rendered: dict[str, list[dict[str, Any]]], kustomization: str
) -> None:
    assert validate_all(rendered[kustomization]) == []


def test_the_validators_catch_what_they_should(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Each validator refuses an unknown field, a wrong type or a missing required field: a
    check that passes everything would pass the manifests too."""
    deployment = json.loads(json.dumps(only(rendered["base"], "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    scaled = json.loads(json.dumps(only(rendered["overlays/keda"], "ScaledObject")))
    scaled["spec"]["minReplicaCount"] = "2"
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 2
    isvc = json.loads(json.dumps(only(rendered["kserve"], "InferenceService")))
    isvc["spec"]["predictor"]["containers"][0]["imagee"] = "x"
    del isvc["spec"]["predictor"]["containers"][0]["name"]
    problems = "\n".join(validate_all([deployment, scaled, isvc]))
    for expected in ("imagePullPolicyy", "minReplicaCount", "threshold", "imagee", "name"):
        assert expected in problems, (expected, problems)


def checkov_report() -> list[dict[str, Any]]:
    proc = subprocess.run(
        [
            str(CHECKOV),
            "-d",
            str(DEPLOY),
            "--framework",
            "kubernetes",
            "kustomize",
            "--skip-download",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "PATH": f"{TOOLS / 'bin'}:{os.environ['PATH']}"},
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    return report if isinstance(report, list) else [report]


def test_checkov_passes_every_kubernetes_check(rendered: dict[str, list[dict[str, Any]]]) -> None:
    reports = {r["check_type"]: r for r in checkov_report()}
    assert set(reports) == {"kubernetes", "kustomize"}, list(reports)
    failed = [
        (c["check_id"], c["resource"], c["file_path"])
        for r in reports.values()
        for c in r["results"]["failed_checks"]
    ]
    assert failed == []
    skipped = {
        (c["check_id"], c["check_result"].get("suppress_comment", ""))
        for r in reports.values()
        for c in r["results"]["skipped_checks"]
    }
    assert len(skipped) <= MAX_SKIPS and all(reason for _, reason in skipped), skipped
    passed = [c for r in reports.values() for c in r["results"]["passed_checks"]]
    # the rendered overlays were scanned, with the checks the hardening is for among them
    for check in ("CKV_K8S_21", "CKV_K8S_22", "CKV_K8S_38", "CKV_K8S_40", "CKV_K8S_43"):
        files = {c["file_path"] for c in passed if c["check_id"] == check}
        assert any("overlays/release/" in f for f in files), (check, files)
    assert any(c["check_id"] == "CKV2_K8S_6" for c in passed)  # pods have a NetworkPolicy


def test_every_object_lives_in_the_namespace(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for kustomization, documents in rendered.items():
        assert only(documents, "Namespace")["metadata"]["name"] == NAMESPACE
        for doc in documents:
            if doc["kind"] not in CLUSTER_SCOPED:
                assert doc["metadata"].get("namespace") == NAMESPACE, (kustomization, doc["kind"])


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_pod_is_hardened(
    rendered: dict[str, list[dict[str, Any]]], kustomization: str
) -> None:
    (spec,) = pod_specs(rendered[kustomization])
    assert spec["automountServiceAccountToken"] is False
    account = only(rendered[kustomization], "ServiceAccount")
    assert spec["serviceAccountName"] == account["metadata"]["name"]
    assert account["automountServiceAccountToken"] is False
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["runAsUser"] >= 10000 and pod["runAsGroup"] >= 10000 and pod["fsGroup"] >= 10000
    (container,) = spec["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    # every writable path is an emptyDir with a size limit
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in container["volumeMounts"]:
        assert "sizeLimit" in volumes[mount["name"]]["emptyDir"], mount
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["livenessProbe"]["httpGet"] and container["readinessProbe"]["httpGet"]
    if kustomization in RELEASED:
        assert "@sha256:" in container["image"], container["image"]
        assert container["imagePullPolicy"] == "Always"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_network_policy_opens_the_serving_ports_only(
    rendered: dict[str, list[dict[str, Any]]], kustomization: str
) -> None:
    documents = rendered[kustomization]
    policy = only(documents, "NetworkPolicy")["spec"]
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    assert policy.get("egress", []) == []  # no egress at all
    labels = policy["podSelector"]["matchLabels"]
    for doc in documents:
        if doc["kind"] == "Deployment":
            pod_labels = doc["spec"]["template"]["metadata"]["labels"]
        elif doc["kind"] == "InferenceService":
            pod_labels = doc["metadata"]["labels"]  # KServe copies them onto its pods
        else:
            continue
        assert labels.items() <= pod_labels.items()
    opened = {(p["port"], p["protocol"]) for rule in policy["ingress"] for p in rule["ports"]}
    served = {
        (p["containerPort"], p["protocol"])
        for spec in pod_specs(documents)
        for p in spec["containers"][0]["ports"]
    }
    assert served <= opened <= {(3000, "TCP"), (8001, "TCP")}, (served, opened)


def capacity() -> dict[str, Any]:
    derived: dict[str, Any] = json.loads(
        (ROOT / "loadtest" / "results" / "capacity.json").read_text()
    )["derived"]
    return derived


def test_keda_scales_on_the_measured_in_flight_target(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    documents = rendered["overlays/keda"]
    assert not [d for d in documents if d["kind"] == "HorizontalPodAutoscaler"]  # KEDA makes it
    deployment = only(documents, "Deployment")
    spec = only(documents, "ScaledObject")["spec"]
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert spec["minReplicaCount"] <= spec["fallback"]["replicas"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert "rnnserve_requests_in_flight" in trigger["metadata"]["query"]
    assert trigger["metadata"]["query"].startswith("sum(")  # one series per worker: summed
    target = capacity()["target_in_flight"]
    assert int(trigger["metadata"]["threshold"]) == target
    # the base keeps the CPU HPA as the fallback where KEDA is not installed
    assert only(rendered["overlays/release"], "HorizontalPodAutoscaler")


def test_kserve_runs_the_same_pod_as_the_deployment(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    isvc = only(rendered["kserve"], "InferenceService")
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "RawDeployment"
    predictor = isvc["spec"]["predictor"]
    deployment = only(rendered["overlays/release"], "Deployment")["spec"]["template"]["spec"]
    for key in ("securityContext", "volumes", "automountServiceAccountToken"):
        assert predictor[key] == deployment[key], key
    ours, theirs = predictor["containers"][0], deployment["containers"][0]
    for key in ("image", "env", "resources", "securityContext", "volumeMounts"):
        assert ours[key] == theirs[key], key
    assert ours["ports"] == [{"name": "http1", "containerPort": 3000, "protocol": "TCP"}]
    # KServe's own probe paths, the V2 health routes
    assert ours["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert ours["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    metric = predictor["autoScaling"]["metrics"][0]["external"]
    scaled = only(rendered["overlays/keda"], "ScaledObject")["spec"]["triggers"][0]["metadata"]
    assert metric["metric"]["query"] == scaled["query"]
    assert metric["target"]["averageValue"] == scaled["threshold"]


def test_the_kustomization_files_are_all_listed() -> None:
    """A new overlay is checked here as soon as it exists."""
    found = {str(p.parent.relative_to(K8S)) for p in K8S.rglob("kustomization.yaml")} - {"common"}
    assert found == set(KUSTOMIZATIONS)
    assert not list(DEPLOY.glob("**/*.yml")), "name YAML files .yaml"
    assert Path(KUSTOMIZE).resolve().is_file()
