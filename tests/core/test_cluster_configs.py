"""The cluster configs under cluster/ are checked as far as a machine without a cloud allows:

- cluster/launcher/*.yaml: Ray's own cluster-launcher checks (``prepare_config``, the defaults merge
  `ray up` does first, then ``validate_config`` against Ray's ray-schema.json), without AWS.
- cluster/kuberay/*.yaml: the ray.io/v1 RayJob/RayCluster fields these manifests use (a hand-written
  subset of the KubeRay CRDs, below: no package on PyPI ships those schemas), strictly: unknown or
  misspelled keys and wrong types fail. Their pod templates are checked against Kubernetes' own
  schemas (kubernetes-validate, strict) where that package is installed.
- Security: token authentication on every node and client container, the token from a secret or a file
  outside the repo and never inline, the dashboard never on a public address, no credentials inline.
- Jobs: the entrypoints are glmscore's CLI (score flags parsed by the real parser, with --device gpu),
  and every pip list equals pyproject's dependencies (less ray, which the image has) plus the `gpu` extra.

Each check returns a list of problems, so that the negative tests can show it rejects bad configs.
"""

import copy
import os
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
LAUNCHER = sorted((CLUSTER / "launcher").glob("*.yaml"))
LOCK = CLUSTER / "requirements-gpu.lock"
DOCKERFILE = CLUSTER / "image" / "Dockerfile"
GLMSCORE_IMAGE = "ghcr.io/your-org/glmscore:"
KUBERAY = sorted((CLUSTER / "kuberay").glob("*.yaml"))
RUNTIME_ENVS = sorted(CLUSTER.glob("runtime_env*.yaml"))
ALL_CONFIGS = sorted(p for p in CLUSTER.rglob("*") if p.is_file())


def _docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _one(path: Path) -> dict:
    (doc,) = _docs(path)
    return doc


def _kuberay_docs() -> list[tuple[str, dict]]:
    """The Ray resources of cluster/kuberay (RayJob, RayCluster); the NetworkPolicy beside them is ``_policies``."""
    return [(f"{p.name}[{i}]", d) for p in KUBERAY for i, d in enumerate(_docs(p)) if d.get("kind") != "NetworkPolicy"]


def _policies() -> list[dict]:
    return [d for p in KUBERAY for d in _docs(p) if d.get("kind") == "NetworkPolicy"]


def test_the_configs_exist():
    assert LAUNCHER and KUBERAY and RUNTIME_ENVS
    kinds = {d.get("kind") for _, d in _kuberay_docs()}
    assert {"RayJob", "RayCluster"} <= kinds


# ---------------------------------------------------------------- cluster launcher: Ray's validator

def ray_launcher_check(config: dict) -> dict:
    """What `ray up` does to a config before it contacts the cloud: merge the provider's defaults and
    the setup commands (prepare_config), then validate against ray-schema.json. Raises on an invalid
    config; returns the prepared one. The AWS step after it (resource autodetection, IAM, subnets) is
    not run: the node types' resources are written out in the config instead."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_config_passes_rays_validator(path):
    prepared = ray_launcher_check(_one(path))
    types = prepared["available_node_types"]
    head = prepared["head_node_type"]
    workers = {name: t for name, t in types.items() if name != head}
    # the autoscaler adds GPU nodes for pending GPU actors only if a node type says it brings GPUs
    assert workers and all(t["resources"].get("GPU", 0) >= 1 for t in workers.values())
    assert types[head]["max_workers"] == 0 and types[head]["resources"].get("GPU", 0) == 0


@pytest.mark.parametrize("edit", [
    lambda c: c.__setitem__("idle_timout_minutes", 5),                                   # misspelled key
    lambda c: c["available_node_types"]["gpu_a10g"].__setitem__("min_worker", 1),         # misspelled key
    lambda c: c.__setitem__("max_workers", "8"),                                          # wrong type
    lambda c: c["available_node_types"]["gpu_a10g"]["resources"].__setitem__("GPU", 0.5),  # not an integer
    lambda c: c["available_node_types"]["gpu_a10g"].pop("resources"),                     # `ray up` needs it offline
])
def test_rays_validator_rejects_a_broken_launcher_config(edit):
    import jsonschema

    config = _one(CLUSTER / "launcher" / "gpu-cluster.yaml")
    edit(config)
    with pytest.raises(jsonschema.ValidationError):
        ray_launcher_check(config)


# ---------------------------------------------------------------- launcher: security

def _env_and_argv(command: str) -> tuple[dict, list]:
    """Leading VAR=value assignments and the rest of a shell command line."""
    words = shlex.split(command)
    env = {}
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    return env, words


def _flag(argv: list, name: str) -> str | None:
    for i, w in enumerate(argv):
        if w == name and i + 1 < len(argv):
            return argv[i + 1]
        if w.startswith(name + "="):
            return w.split("=", 1)[1]
    return None


def launcher_security_problems(config: dict) -> list[str]:
    problems = []
    mounts = config.get("file_mounts", {})
    starts = [("head", c) for c in config.get("head_start_ray_commands", [])]
    starts += [("worker", c) for c in config.get("worker_start_ray_commands", [])]
    ray_starts = 0
    for role, command in starts:
        env, argv = _env_and_argv(command)
        if argv[:2] != ["ray", "start"]:
            continue
        ray_starts += 1
        if env.get("RAY_AUTH_MODE") != "token":
            problems.append(f"{role}: `ray start` without RAY_AUTH_MODE=token")
        if "RAY_AUTH_TOKEN" in env:
            problems.append(f"{role}: the token inline (RAY_AUTH_TOKEN=...); read it from a file (RAY_AUTH_TOKEN_PATH)")
        path = env.get("RAY_AUTH_TOKEN_PATH", "")
        remote = path.replace("$HOME/", "~/").replace("${HOME}/", "~/")
        if remote not in mounts:
            problems.append(f"{role}: RAY_AUTH_TOKEN_PATH={path!r} is not a file_mounts target, so no node has it")
        else:
            local = Path(os.path.expanduser(mounts[remote])).resolve()
            if local.is_relative_to(ROOT):
                problems.append(f"{role}: the token file {mounts[remote]} lies in the repository")
        if role == "head":
            host = _flag(argv, "--dashboard-host")
            if host != "127.0.0.1":
                problems.append(f"head: --dashboard-host={host} (must be 127.0.0.1: reach it through `ray dashboard`)")
    if sum(1 for r, c in starts if r == "head" and _env_and_argv(c)[1][:2] == ["ray", "start"]) != 1:
        problems.append("head_start_ray_commands: expected exactly one `ray start --head`")
    if not any(r == "worker" and _env_and_argv(c)[1][:2] == ["ray", "start"] for r, c in starts):
        problems.append("worker_start_ray_commands: no `ray start`")
    for opt in config.get("docker", {}).get("run_options", []):
        if re.search(r"(^|\s)(-p|--publish|-P|--publish-all)(\s|=|$)", opt):
            problems.append(f"docker run_options publishes ports: {opt!r}")
    for key in ("ssh_private_key", "ssh_password"):
        if key in config.get("auth", {}):
            problems.append(f"auth.{key} in the config (use the provider's key pair / an agent)")
    problems += launcher_privilege_problems(config)
    return problems + (["no `ray start` at all"] if not ray_starts else [])


def launcher_privilege_problems(config: dict) -> list[str]:
    """Least privilege: a security group of our own whose only rule open beyond the cluster is SSH from an admin
    CIDR (Ray's default opens SSH to 0.0.0.0/0), an instance profile of our own on every node type (Ray's
    default head role has full EC2 and S3 access), shared storage mounted with TLS and not world-writable."""
    problems = []
    group = config.get("provider", {}).get("security_group")
    if not group:
        problems.append("provider.security_group missing: Ray's default group opens SSH to the world")
    for rule in (group or {}).get("IpPermissions", []):
        for r in rule.get("IpRanges", []):
            if r.get("CidrIp") in ("0.0.0.0/0", "::/0"):
                problems.append(f"security group rule {rule.get('FromPort')}-{rule.get('ToPort')} open to {r['CidrIp']}")
        if (rule.get("FromPort"), rule.get("ToPort")) != (22, 22):
            problems.append(f"security group opens ports {rule.get('FromPort')}-{rule.get('ToPort')} beyond the cluster")
    for name, node in config.get("available_node_types", {}).items():
        if "IamInstanceProfile" not in node.get("node_config", {}):
            problems.append(f"{name}: no IamInstanceProfile (Ray's default head role has full EC2 and S3 access)")
    for command in config.get("initialization_commands", []) + config.get("setup_commands", []):
        if re.search(r"chmod\s+[0-7]?777\b", command):
            problems.append(f"world-writable shared storage: {command.strip()[:80]}")
        if re.search(r"\bmount\b", command) and "efs" in command and not re.search(r"-o\s+\S*\btls\b", command):
            problems.append("EFS mounted without TLS (mount -t efs -o tls)")
    return problems


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_token_auth_on_every_node_and_dashboard_on_loopback(path):
    assert launcher_security_problems(_one(path)) == []


@pytest.mark.parametrize("old, new, expected", [
    ("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0", "--dashboard-host=0.0.0.0"),
    ("--dashboard-host=127.0.0.1", "", "--dashboard-host=None"),
    ("RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$HOME/ray_auth_token ray start --address",
     "RAY_AUTH_TOKEN_PATH=$HOME/ray_auth_token ray start --address", "worker: `ray start` without RAY_AUTH_MODE=token"),
    ("RAY_AUTH_TOKEN_PATH=$HOME/ray_auth_token ray start --head", "RAY_AUTH_TOKEN=0123abcd ray start --head",
     "the token inline"),
    ("CidrIp: 203.0.113.0/24", "CidrIp: 0.0.0.0/0", "open to 0.0.0.0/0"),
    ("FromPort: 22, ToPort: 22", "FromPort: 0, ToPort: 65535", "opens ports 0-65535"),
    ('      IamInstanceProfile: {Arn: "arn:aws:iam::REPLACE-ME:instance-profile/glmscore-ray-head"}\n', "",
     "head: no IamInstanceProfile"),
    ("sudo chmod 0750 /mnt/efs", "sudo chmod 1777 /mnt/efs", "world-writable"),
    ("mount -t efs -o tls", "mount -t nfs4 -o nfsvers=4.1", "without TLS"),
])
def test_launcher_security_check_rejects(old, new, expected):
    text = (CLUSTER / "launcher" / "gpu-cluster.yaml").read_text()
    assert old in text
    problems = launcher_security_problems(yaml.safe_load(text.replace(old, new)))
    assert any(expected in p for p in problems), problems


def test_launcher_security_check_rejects_a_token_file_in_the_repo():
    config = _one(CLUSTER / "launcher" / "gpu-cluster.yaml")
    config["file_mounts"] = {"~/ray_auth_token": str(ROOT / "cluster" / "auth_token")}
    assert any("lies in the repository" in p for p in launcher_security_problems(config))


# ---------------------------------------------------------------- KubeRay: the CRD fields used

# The subset of KubeRay's ray.io/v1 CRDs (RayJob, RayCluster) that cluster/kuberay/ uses, following
# KubeRay v1.4 (every field here exists since v1.1). Written by hand: no PyPI package ships the CRD
# schemas. A dict is an object with exactly these keys ("!" = required), [x] a list of x, a set an
# enum, MapOf(t) a map of strings to t; POD is a core/v1 PodTemplateSpec (checked by
# kubernetes-validate below where installed).

class MapOf:
    def __init__(self, value):
        self.value = value


POD = "PodTemplateSpec"
ENV_VAR = {"name!": str, "value": str,
           "valueFrom": {"secretKeyRef": {"name!": str, "key!": str, "optional": bool}}}
METADATA = {"name!": str, "namespace": str, "labels": MapOf(str), "annotations": MapOf(str)}
HEAD_GROUP = {
    "serviceType": {"ClusterIP", "NodePort", "LoadBalancer"},
    "enableIngress": bool,
    "rayStartParams": MapOf(str),  # map[string]string: "0", not 0
    "template!": POD,
}
WORKER_GROUP = {
    "groupName!": str, "replicas": int, "minReplicas": int, "maxReplicas": int,
    "rayStartParams": MapOf(str), "template!": POD,
}
RAY_CLUSTER_SPEC = {
    "rayVersion": str,
    "enableInTreeAutoscaling": bool,
    "autoscalerOptions": {"idleTimeoutSeconds": int, "upscalingMode": {"Default", "Aggressive", "Conservative"},
                          "env": [ENV_VAR], "image": str, "imagePullPolicy": {"Always", "IfNotPresent", "Never"}},
    "headGroupSpec!": HEAD_GROUP,
    "workerGroupSpecs": [WORKER_GROUP],
}
CRDS = {
    "RayJob": {
        "apiVersion!": {"ray.io/v1"}, "kind!": {"RayJob"}, "metadata!": METADATA,
        "spec!": {
            "entrypoint": str,
            "runtimeEnvYAML": str,
            "submissionMode": {"K8sJobMode", "HTTPMode"},
            "shutdownAfterJobFinishes": bool,
            "ttlSecondsAfterFinished": int,
            "activeDeadlineSeconds": int,
            "submitterPodTemplate": POD,
            "rayClusterSpec": RAY_CLUSTER_SPEC,
        },
    },
    "RayCluster": {"apiVersion!": {"ray.io/v1"}, "kind!": {"RayCluster"}, "metadata!": METADATA,
                   "spec!": RAY_CLUSTER_SPEC},
}


def schema_problems(value, schema, path: str = "") -> list[str]:
    if schema is POD:
        return [] if isinstance(value, dict) else [f"{path}: a pod template (object), got {type(value).__name__}"]
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return [f"{path}: an object, got {type(value).__name__}"]
        fields = {k.rstrip("!"): s for k, s in schema.items()}
        problems = [f"{path}.{k}: unknown field" for k in value if k not in fields]
        problems += [f"{path}.{k[:-1]}: required" for k in schema if k.endswith("!") and k[:-1] not in value]
        for k, v in value.items():
            if k in fields:
                problems += schema_problems(v, fields[k], f"{path}.{k}")
        return problems
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f"{path}: a list, got {type(value).__name__}"]
        return [p for i, v in enumerate(value) for p in schema_problems(v, schema[0], f"{path}[{i}]")]
    if isinstance(schema, MapOf):
        if not isinstance(value, dict):
            return [f"{path}: a map, got {type(value).__name__}"]
        return [p for k, v in value.items() for p in schema_problems(v, schema.value, f"{path}.{k}")]
    if isinstance(schema, set):
        return [] if value in schema else [f"{path}: {value!r} is not one of {sorted(schema)}"]
    # a scalar type; YAML's true/false are not integers here
    if isinstance(value, schema) and not (schema is int and isinstance(value, bool)):
        return []
    return [f"{path}: {schema.__name__} expected, got {type(value).__name__} {value!r}"]


def crd_problems(doc: dict) -> list[str]:
    kind = doc.get("kind")
    if kind not in CRDS:
        return [f"kind {kind!r}: only RayJob and RayCluster belong in cluster/kuberay (no Ingress, Service, ...)"]
    problems = schema_problems(doc, CRDS[kind], kind)
    spec = doc.get("spec", {})
    cluster = spec.get("rayClusterSpec", spec) if kind == "RayJob" else spec
    for i, g in enumerate(cluster.get("workerGroupSpecs", []) if isinstance(cluster, dict) else []):
        lo, n, hi = g.get("minReplicas", 0), g.get("replicas", 0), g.get("maxReplicas", 0)
        if all(isinstance(x, int) for x in (lo, n, hi)) and not lo <= n <= hi:
            problems.append(f"workerGroupSpecs[{i}]: minReplicas <= replicas <= maxReplicas fails ({lo}, {n}, {hi})")
    return problems


@pytest.mark.parametrize("name, doc", _kuberay_docs(), ids=[n for n, _ in _kuberay_docs()])
def test_kuberay_manifest_matches_the_crd_fields(name, doc):
    assert crd_problems(doc) == []


def _rayjob() -> dict:
    return _one(CLUSTER / "kuberay" / "rayjob.yaml")


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].__setitem__("minReplica", 0), "minReplica: unknown field"),
    (lambda d: d["spec"].__setitem__("shutdownAfterJobFinish", True), "shutdownAfterJobFinish: unknown field"),
    (lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].__setitem__("num-cpus", 0),
     "rayStartParams.num-cpus: str expected, got int"),
    (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].__setitem__("maxReplicas", "8"), "maxReplicas: int expected"),
    (lambda d: d["spec"].__setitem__("ttlSecondsAfterFinished", True), "ttlSecondsAfterFinished: int expected, got bool"),
    (lambda d: d.__setitem__("apiVersion", "ray.io/v1alpha1"), "apiVersion: 'ray.io/v1alpha1' is not one of"),
    (lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"].pop("template"), "headGroupSpec.template: required"),
    (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].__setitem__("replicas", 9), "minReplicas <= replicas"),
    (lambda d: d.__setitem__("kind", "Ingress"), "only RayJob and RayCluster"),
])
def test_crd_check_rejects(edit, expected):
    doc = _rayjob()
    edit(doc)
    problems = crd_problems(doc)
    assert any(expected in p for p in problems), problems


def _pod_templates(doc: dict) -> list[tuple[str, dict]]:
    spec = doc["spec"]
    cluster = spec.get("rayClusterSpec", spec)
    out = [("head", cluster["headGroupSpec"]["template"])]
    out += [(f"worker {g['groupName']}", g["template"]) for g in cluster.get("workerGroupSpecs", [])]
    if "submitterPodTemplate" in spec:
        out.append(("submitter", spec["submitterPodTemplate"]))
    return out


def pod_template_problems(template: dict) -> list[str]:
    kv = pytest.importorskip("kubernetes_validate", reason="strict Kubernetes schemas: pip install kubernetes-validate")
    pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
    try:
        kv.validate(pod_template, "1.30", strict=True)
    except kv.ValidationError as e:
        return [str(e).splitlines()[0]]
    return []


@pytest.mark.parametrize("name, doc", _kuberay_docs(), ids=[n for n, _ in _kuberay_docs()])
def test_kuberay_pod_templates_match_kubernetes_schemas(name, doc):
    assert {role: pod_template_problems(t) for role, t in _pod_templates(doc)} == {
        role: [] for role, _ in _pod_templates(doc)}


def test_pod_template_check_rejects_a_misspelled_field():
    template = copy.deepcopy(_pod_templates(_rayjob())[0][1])
    template["spec"]["containers"][0]["volumeMount"] = template["spec"]["containers"][0].pop("volumeMounts")
    assert any("volumeMount" in p for p in pod_template_problems(template))


# ---------------------------------------------------------------- KubeRay: security

AUTH_SECRET = "glmscore-ray-token"


def env_auth_problems(env: list, where: str) -> list[str]:
    by_name = {e.get("name"): e for e in env or []}
    problems = []
    if by_name.get("RAY_AUTH_MODE", {}).get("value") != "token":
        problems.append(f"{where}: no RAY_AUTH_MODE=token")
    token = by_name.get("RAY_AUTH_TOKEN")
    if token is None:
        problems.append(f"{where}: no RAY_AUTH_TOKEN")
    elif "value" in token or "secretKeyRef" not in token.get("valueFrom", {}):
        problems.append(f"{where}: RAY_AUTH_TOKEN must come from a secret (valueFrom.secretKeyRef), never inline")
    return problems


def kuberay_security_problems(doc: dict) -> list[str]:
    kind, spec = doc.get("kind"), doc.get("spec", {})
    if kind not in CRDS:
        return [f"kind {kind}: not allowed (no Ingress or Service of our own)"]
    cluster = spec.get("rayClusterSpec", spec) if kind == "RayJob" else spec
    head = cluster["headGroupSpec"]
    problems = []
    if head.get("serviceType") != "ClusterIP":
        problems.append(f"head serviceType {head.get('serviceType')!r}: must be ClusterIP (no LoadBalancer/NodePort)")
    if head.get("enableIngress"):
        problems.append("head enableIngress: the dashboard must not get an Ingress")
    host = head.get("rayStartParams", {}).get("dashboard-host")
    if kind == "RayCluster" and host != "127.0.0.1":
        # users reach it with `kubectl port-forward`, which connects inside the pod
        problems.append(f"RayCluster dashboard-host {host!r}: must be 127.0.0.1 (reach it with kubectl port-forward)")
    if kind == "RayJob" and host != "0.0.0.0":
        # The KubeRay operator and the submitter Job reach the dashboard through the head service, so a
        # RayJob's dashboard listens on the pod's (cluster-internal) address: never a specific public IP,
        # and only behind the ClusterIP service checked above, with the token on every request.
        problems.append(f"RayJob dashboard-host {host!r}: must be 0.0.0.0 inside the pod, for the operator "
                        "and the submitter through the ClusterIP service")
    for role, template in _pod_templates(doc):
        for c in template.get("spec", {}).get("containers", []):
            problems += env_auth_problems(c.get("env"), f"{role} container {c.get('name')}")
            for e in c.get("env") or []:
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if e.get("name") == "RAY_AUTH_TOKEN" and ref and ref.get("name") != AUTH_SECRET:
                    problems.append(f"{role}: RAY_AUTH_TOKEN from secret {ref.get('name')}, not {AUTH_SECRET}")
    if kind == "RayJob" and "submitterPodTemplate" not in spec:
        problems.append("RayJob without submitterPodTemplate: the default submitter has no token")
    if cluster.get("enableInTreeAutoscaling"):
        problems += env_auth_problems(cluster.get("autoscalerOptions", {}).get("env"), "autoscaler")
    return problems


@pytest.mark.parametrize("name, doc", _kuberay_docs(), ids=[n for n, _ in _kuberay_docs()])
def test_kuberay_token_auth_everywhere_and_dashboard_not_public(name, doc):
    assert kuberay_security_problems(doc) == []


def network_policy_problems(policies: list[dict]) -> list[str]:
    """A NetworkPolicy covers every head: it selects ``ray.io/node-type: head`` pods, restricts Ingress, and lets
    in only this namespace's pods and the operator's namespace (never an ipBlock, never every namespace)."""
    heads = [p for p in policies if p.get("spec", {}).get("podSelector", {}).get("matchLabels", {}).get("ray.io/node-type") == "head"]
    if not heads:
        return ["no NetworkPolicy selects the Ray head pods (ray.io/node-type: head): its dashboard is open to the whole cluster"]
    problems = []
    for policy in heads:
        spec = policy["spec"]
        if "Ingress" not in spec.get("policyTypes", []):
            problems.append(f"{policy['metadata']['name']}: policyTypes lacks Ingress")
        for rule in spec.get("ingress", []):
            peers = rule.get("from")
            if not peers:
                problems.append(f"{policy['metadata']['name']}: an ingress rule without `from` admits everyone")
            for peer in peers or []:
                if "ipBlock" in peer:
                    problems.append(f"{policy['metadata']['name']}: ipBlock {peer['ipBlock']} admits addresses outside the cluster")
                if "namespaceSelector" in peer and not peer["namespaceSelector"].get("matchLabels"):
                    problems.append(f"{policy['metadata']['name']}: an empty namespaceSelector admits every namespace")
    return problems


def test_a_network_policy_keeps_the_head_to_its_namespace_and_the_operator():
    pytest.importorskip("kubernetes_validate", reason="strict Kubernetes schemas: pip install kubernetes-validate")
    import kubernetes_validate as kv

    for policy in _policies():
        kv.validate(policy, "1.30", strict=True)
    assert network_policy_problems(_policies()) == []


@pytest.mark.parametrize("edit, expected", [
    (lambda p: p["spec"]["podSelector"]["matchLabels"].update({"ray.io/node-type": "worker"}), "no NetworkPolicy selects"),
    (lambda p: p["spec"]["ingress"][0]["from"].append({"ipBlock": {"cidr": "0.0.0.0/0"}}), "ipBlock"),
    (lambda p: p["spec"]["ingress"][0]["from"][1].update({"namespaceSelector": {}}), "every namespace"),
    (lambda p: p["spec"]["ingress"][0].pop("from"), "admits everyone"),
])
def test_network_policy_check_rejects(edit, expected):
    policies = copy.deepcopy(_policies())
    edit(policies[0])
    assert any(expected in p for p in network_policy_problems(policies)), network_policy_problems(policies)


def _raycluster() -> dict:
    return _one(CLUSTER / "kuberay" / "raycluster.yaml")


@pytest.mark.parametrize("make, expected", [
    (lambda: _set(_raycluster(), "spec.headGroupSpec.serviceType", "LoadBalancer"), "must be ClusterIP"),
    (lambda: _set(_rayjob(), "spec.rayClusterSpec.headGroupSpec.serviceType", "NodePort"), "must be ClusterIP"),
    (lambda: _set(_raycluster(), "spec.headGroupSpec.enableIngress", True), "enableIngress"),
    (lambda: _set(_raycluster(), "spec.headGroupSpec.rayStartParams.dashboard-host", "0.0.0.0"), "must be 127.0.0.1"),
    (lambda: _set(_rayjob(), "spec.rayClusterSpec.headGroupSpec.rayStartParams.dashboard-host", "203.0.113.7"),
     "must be 0.0.0.0 inside the pod"),
    (lambda: _set(_raycluster(), "spec.workerGroupSpecs.0.template.spec.containers.0.env",
                  [{"name": "RAY_AUTH_MODE", "value": "token"}, {"name": "RAY_AUTH_TOKEN", "value": "abc123"}]),
     "never inline"),
    (lambda: _set(_raycluster(), "spec.workerGroupSpecs.0.template.spec.containers.0.env", []), "no RAY_AUTH_MODE=token"),
    (lambda: _set(_raycluster(), "spec.autoscalerOptions.env", []), "autoscaler: no RAY_AUTH_MODE=token"),
    (lambda: _set(_rayjob(), "spec.submitterPodTemplate.spec.containers.0.env", []), "submitter container"),
    (lambda: {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress"}, "not allowed"),
])
def test_kuberay_security_check_rejects(make, expected):
    problems = kuberay_security_problems(make())
    assert any(expected in p for p in problems), problems


def _set(doc: dict, dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    node = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = copy.deepcopy(value)  # the YAML anchors share one env list between containers
    return doc


# ---------------------------------------------------------------- no credentials inline, anywhere

SECRET_PATTERNS = [
    (r"AKIA[0-9A-Z]{16}", "an AWS access key id"),
    (r"(?i)aws_secret_access_key|aws_session_token", "an AWS secret key"),
    (r"-----BEGIN [A-Z ]*PRIVATE KEY-----", "a private key"),
    (r"\bhf_[A-Za-z0-9]{30,}", "a Hugging Face token"),
    (r"\bgh[pousr]_[A-Za-z0-9]{30,}", "a GitHub token"),
    (r"\b[0-9a-f]{32,}\b", "a hex token"),
    (r"(?i)\b(RAY_AUTH_TOKEN|HF_TOKEN|HUGGING_FACE_HUB_TOKEN|WANDB_API_KEY|[A-Z_]*PASSWORD)=[^\s\"'$]", "a token assigned inline"),
]


def inline_secret_problems(text: str, where: str) -> list[str]:
    problems = [f"{where}: {what}" for pattern, what in SECRET_PATTERNS if re.search(pattern, text)]
    # an env var that looks secret must come from a secret, not `value:`
    for doc in yaml.safe_load_all(text) if where.endswith(".yaml") else []:
        for env in _walk_env(doc):
            if re.search(r"(?i)token|secret|password|key", env.get("name", "")) and "value" in env:
                problems.append(f"{where}: env {env['name']} has an inline value")
    return problems


def _walk_env(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "env" and isinstance(v, list):
                yield from (e for e in v if isinstance(e, dict))
            else:
                yield from _walk_env(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk_env(v)


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(CLUSTER)))
def test_no_credentials_inline(path):
    text = re.sub(r"--hash=sha256:[0-9a-f]{64}\b", "", path.read_text())  # the lock's wheel digests are no secret
    assert inline_secret_problems(text, str(path.relative_to(CLUSTER))) == []


@pytest.mark.parametrize("text", [
    "env: [{name: RAY_AUTH_TOKEN, value: notasecretref}]",
    "env: [{name: HF_TOKEN, value: x}]",
    "cmd: RAY_AUTH_TOKEN=abc ray start --head",
    "token: 3f7c2a9e4b1d8c6f0a5e7b9d2c4f6a8e",
    "aws_access_key_id: AKIAABCDEFGHIJKLMNOP",
])
def test_inline_credentials_are_caught(text):
    assert inline_secret_problems(text, "bad.yaml")


# ---------------------------------------------------------------- versions: images, rayVersion, Ray here

def test_ray_versions_and_images_agree_with_this_environment():
    import ray

    images = [_one(p)["docker"]["image"] for p in LAUNCHER]
    versions = []
    for _, doc in _kuberay_docs():
        spec = doc["spec"]
        cluster = spec.get("rayClusterSpec", spec)
        versions.append(cluster["rayVersion"])
        images += [c["image"] for _, t in _pod_templates(doc) for c in t["spec"]["containers"]]
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    lowest = tuple(int(x) for x in re.search(r">=\s*(\d+)\.(\d+)", requires).groups())
    base = re.search(r"^FROM (\S+)$", DOCKERFILE.read_text(), re.M).group(1)
    for image in images:
        if image.startswith(GLMSCORE_IMAGE):  # glmscore's image: Ray's, plus the lock (its tag is its base's)
            assert image.split(":")[1] == base.split(":")[1], (image, base)
            image = base
        m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3(\d+)(-gpu)?", image)
        assert m, f"unexpected image {image}"
        assert m.group(1) == ray.__version__, f"{image}: the tests run Ray {ray.__version__}"
        assert (3, int(m.group(2))) >= lowest, f"{image}: pyproject requires Python {requires}"
    assert set(versions) == {ray.__version__}


# ---------------------------------------------------------------- pip lists = pyproject deps + gpu extra

def expected_pip() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "gpu" in project["optional-dependencies"], "pyproject.toml lost its `gpu` extra"
    base = [r for r in project["dependencies"] if Requirement(r).name != "ray"]  # the Ray image has ray
    return sorted(str(Requirement(r)) for r in base + project["optional-dependencies"]["gpu"])


def lock_problems(text: str, want: list[str]) -> list[str]:
    """Why a hash lock does not install ``want`` (pyproject's requirements): it was made from other
    requirements, a requirement is not pinned to a version it allows, or a pin has no hash."""
    problems = []
    made_from = re.findall(r"^#   requirement: (.+)$", text, re.M)
    if sorted(made_from) != want:
        problems.append(f"made from {sorted(made_from)}, not pyproject's {want}: run cluster/lock.sh")
    pins = {}
    for block in re.split(r"\n(?=\S)", text):
        m = re.match(r"([A-Za-z0-9_.\-]+)==(\S+)", block)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
            if "--hash=sha256:" not in block:
                problems.append(f"{m.group(1)}=={m.group(2)} has no hash")
    for r in map(Requirement, want):
        version = pins.get(r.name.lower().replace("_", "-"))
        if version is None or not r.specifier.contains(version, prereleases=True):
            problems.append(f"{r} is not pinned to a version it allows ({version})")
    return problems


def _runtime_envs() -> list[tuple[str, dict]]:
    envs = [(p.name, _one(p)) for p in RUNTIME_ENVS]
    envs += [(name, yaml.safe_load(doc["spec"]["runtimeEnvYAML"])) for name, doc in _kuberay_docs()
             if doc["kind"] == "RayJob"]
    return envs


def test_the_lock_is_current():
    assert lock_problems(LOCK.read_text(), expected_pip()) == []


def test_lock_drift_is_caught():
    text = LOCK.read_text()
    assert lock_problems(text.replace("#   requirement: vllm>=0.8", "#   requirement: vllm>=0.7"), expected_pip())
    assert lock_problems(text, sorted(expected_pip() + ["torch>=99"]))
    unhashed = "\n".join(line.rstrip(" \\") for line in text.splitlines() if not line.strip().startswith("--hash="))
    assert any("has no hash" in p for p in lock_problems(unhashed, expected_pip()))


def test_every_cluster_path_installs_the_lock_with_hashes():
    """No node pip-installs unpinned packages: the launcher installs the lock with --require-hashes, the GPU
    runtime env reads it, the RayJobs run the image built from it (and no pip list of their own)."""
    from ray.runtime_env import RuntimeEnv

    for path in LAUNCHER:
        config = _one(path)
        assert config["file_mounts"]["~/glmscore-requirements-gpu.lock"] == "cluster/requirements-gpu.lock"
        assert config["setup_commands"] == ["pip install --require-hashes -r ~/glmscore-requirements-gpu.lock"]
    envs = dict(_runtime_envs())
    assert envs["runtime_env_gpu.yaml"]["pip"] == "cluster/requirements-gpu.lock"
    cwd = os.getcwd()
    os.chdir(ROOT)  # where `ray job submit --runtime-env cluster/runtime_env_gpu.yaml` runs
    try:
        packages = RuntimeEnv(pip=envs["runtime_env_gpu.yaml"]["pip"])["pip"]["packages"]
    finally:
        os.chdir(cwd)
    assert any(line.strip().startswith("--hash=sha256:") for line in packages)
    for name, env in envs.items():
        if name.startswith("rayjob"):
            assert "pip" not in env, name
    for name, doc in _kuberay_docs():
        if doc["kind"] == "RayJob":
            ray_images = [c["image"] for t_name, t in _pod_templates(doc) for c in t["spec"]["containers"]
                          if "submitter" not in t_name]
            assert ray_images and all(i.startswith(GLMSCORE_IMAGE) for i in ray_images), (name, ray_images)
    docker = DOCKERFILE.read_text()
    assert "COPY cluster/requirements-gpu.lock" in docker and "pip install --no-cache-dir --require-hashes -r" in docker


@pytest.mark.parametrize("name, env", _runtime_envs(), ids=[n for n, _ in _runtime_envs()])
def test_runtime_envs_pass_rays_runtime_env_checks(name, env):
    from ray.runtime_env import RuntimeEnv

    assert set(env) <= set(RuntimeEnv.known_fields), set(env) - set(RuntimeEnv.known_fields)
    RuntimeEnv(**env)  # Ray's own type and field checks (pip, env_vars, working_dir URI)
    if name.startswith("rayjob"):
        # the submitter pod has no checkout: the code comes from a URI the cluster can fetch
        assert re.match(r"(https|s3|gs)://\S+\.zip$", env["working_dir"]), env.get("working_dir")


def test_runtime_env_check_rejects_a_bad_env():
    from ray.runtime_env import RuntimeEnv

    with pytest.raises((TypeError, ValueError)):
        RuntimeEnv(**{"pip": ["vllm>=0.8"], "env_vars": {"TOKENIZERS_PARALLELISM": False}})


# ---------------------------------------------------------------- entrypoints: glmscore's CLI

@pytest.fixture(scope="module")
def parser():
    from glmscore.pipelines.cli import build_parser

    return build_parser()


def _mounts(template: dict) -> set[str]:
    return {m["mountPath"] for c in template["spec"]["containers"] for m in c.get("volumeMounts", [])}


def entrypoint_problems(doc: dict, parser) -> list[str]:
    words = shlex.split(doc["spec"].get("entrypoint", ""))
    if words[:3] != ["python", "-m", "glmscore"] or len(words) < 4 or words[3] not in ("score", "sweep"):
        return [f"entrypoint {words[:4]}: must be `python -m glmscore score|sweep ...`"]
    # the files a job reads and writes live on a volume every Ray node mounts
    shared = set.intersection(*(_mounts(t) for role, t in _pod_templates(doc) if role != "submitter"))
    if words[3] == "sweep":
        paths = [w for w in words[4:] if w.startswith("/")]
        return [f"sweep file {p} is not on a volume every node mounts" for p in paths
                if not any(p.startswith(m + "/") for m in shared)]
    try:
        args = parser.parse_args(words[3:])
    except SystemExit:
        return [f"`glmscore {' '.join(words[3:])}` does not parse with glmscore.pipelines.cli.build_parser()"]
    from glmscore.models.cards import shipped_cards

    problems = []
    if args.device != "gpu":
        problems.append(f"--device {args.device}: GPU jobs pass --device gpu (the autoscaler adds GPU nodes for them)")
    if not args.max_actors:
        problems.append("no --max-actors: cap the GPU pool")
    if args.model not in shipped_cards():
        problems.append(f"--model {args.model}: no such model card")
    for flag in ("data", "out"):
        value = getattr(args, flag)
        if not any(value.startswith(m + "/") for m in shared):
            problems.append(f"--{flag} {value} is not on a volume every node mounts")
    return problems


@pytest.mark.parametrize("name, doc", [(n, d) for n, d in _kuberay_docs() if d["kind"] == "RayJob"],
                         ids=[n for n, d in _kuberay_docs() if d["kind"] == "RayJob"])
def test_rayjob_entrypoint_is_the_glmscore_cli(name, doc, parser):
    assert entrypoint_problems(doc, parser) == []


@pytest.mark.parametrize("entrypoint, expected", [
    ("python -m glmscore score --benchmark nullsette --data /data/p --model metagene-1 --out /data/s "
     "--max-actors 8", "GPU jobs pass --device gpu"),
    ("python -m glmscore score --benchmark nullsette --data /data/p --model metagene-1 --out /data/s "
     "--device gpu --max-actros 8", "does not parse"),
    ("python -m glmscore score --benchmark nullsette --data /data/p --model metagene-1 --out /tmp/s "
     "--device gpu --max-actors 8", "--out /tmp/s is not on a volume"),
    ("python -m glmscore score --benchmark nullsette --data /data/p --model no-such-card --out /data/s "
     "--device gpu --max-actors 8", "no such model card"),
    ("python run.py", "must be `python -m glmscore"),
])
def test_entrypoint_check_rejects(entrypoint, expected, parser):
    doc = _rayjob()
    doc["spec"]["entrypoint"] = entrypoint
    problems = entrypoint_problems(doc, parser)
    assert any(expected in p for p in problems), problems


def _docs_clusters_section() -> str:
    text = (ROOT / "docs" / "clusters.md").read_text()
    start = text.index("## Clusters (`cluster/`)")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_docs_cluster_commands_parse(parser):
    """The cluster page's (docs/clusters.md) `ray job submit ... -- python -m glmscore score ...` lines parse with the CLI,
    and the files its commands name exist."""
    section = _docs_clusters_section().replace("\\\n", " ")  # shell line continuations
    submits = [line.split(" -- ", 1)[1] for line in section.splitlines() if "ray job submit" in line and " -- " in line]
    devices = []
    for command in submits:
        words = shlex.split(command)
        assert words[:4] == ["python", "-m", "glmscore", "score"], command
        devices.append(parser.parse_args(words[3:]).device)
    assert devices.count("gpu") >= 2, devices  # the launcher's and the RayCluster's
    for path in set(re.findall(r"\bcluster/[\w./-]+\.(?:yaml|sh)\b", section)):
        assert (ROOT / path).is_file(), path
