"""Checks of the Kubernetes manifests (deploy/k8s) that need no cluster.

The kustomization is rendered here from its `resources` and generators (and,
where `kubectl` is installed, compared with `kubectl kustomize`), every
object is validated against the Kubernetes OpenAPI schemas bundled with
`kubernetes-validate` (offline), and the manifests are checked against the
code and docker-compose.yml as test_topology.py does for compose: variable
names against the config structs, probes against the routes, ports,
scheduling on edge nodes, the disruption budget, secrets and privileges.

Run: .venv/bin/python -m pytest -q tests/deploy
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from test_topology import (
    COMPOSE,
    DOCKERFILE,
    EDGE_PORT,
    GATEWAY_PORT,
    MOCK_PORT,
    MODEL_FILE,
    ROOT,
    SEED,
    _env,
    _read,
    clap_envs,
    clap_longs,
    gateway_config_fields,
)

K8S = ROOT / "deploy" / "k8s"
ENV_SCRIPT = ROOT / "scripts" / "k8s-env.sh"
SECRETS_EXAMPLE = K8S / "secrets.env.example"
FETCH_SCRIPT = ROOT / "scripts" / "fetch-model.sh"
# The oldest Kubernetes release the manifests are meant for, and the newest
# the validator knows.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
WORKLOADS = ("Deployment", "DaemonSet", "StatefulSet", "Job")
NAMESPACED_NOT = {"Namespace"}
SECRET_NAMES = re.compile(r"PASSWORD|API_KEY|TOKEN$|DATABASE_URL")
EDGE_LABEL = "node-role.kubernetes.io/edge"


# --------------------------------------------------------------------------
# Rendering the kustomization


def _env_file_keys(path: Path) -> dict[str, str]:
    pairs = {}
    for line in _read(path).splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value
    return pairs


def _generated(kind: str, spec: dict, folder: Path, secret_env: Path | None) -> dict:
    data: dict[str, str] = {}
    for item in spec.get("files", []):
        key, _, rel = item.rpartition("=")
        path = (folder / rel).resolve()
        assert path.is_relative_to(folder.resolve()), f"{item}: kustomize reads no file outside {folder}"
        data[key or path.name] = _read(path)
    for rel in spec.get("envs", []):
        # The env file is git-ignored: its committed example names the keys.
        path = secret_env if secret_env is not None and kind == "Secret" else folder / rel
        data.update(_env_file_keys(path))
    for literal in spec.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]}}
    if kind == "Secret":
        obj["type"] = "Opaque"
        obj["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    else:
        obj["data"] = data
    return obj


def render(folder: Path = K8S, secret_env: Path | None = SECRETS_EXAMPLE) -> list[dict]:
    """The objects `kubectl apply -k folder` would apply, without the name
    suffixes of generated objects."""
    kust = yaml.safe_load(_read(folder / "kustomization.yaml"))
    assert kust["kind"] == "Kustomization"
    # What this renderer does not do must not be used (kubectl would apply it).
    unknown = set(kust) - {"apiVersion", "kind", "namespace", "labels", "resources",
                           "configMapGenerator", "secretGenerator"}
    assert not unknown, f"{folder}: the test's renderer does not handle {sorted(unknown)}"
    docs: list[dict] = []
    for res in kust.get("resources", []):
        path = folder / res
        if path.is_dir():
            docs += render(path, secret_env)
        else:
            assert path.resolve().is_relative_to(folder.resolve()), f"{res} is outside {folder}"
            docs += [d for d in yaml.safe_load_all(_read(path)) if d]
    for spec in kust.get("configMapGenerator", []):
        docs.append(_generated("ConfigMap", spec, folder, secret_env))
    for spec in kust.get("secretGenerator", []):
        docs.append(_generated("Secret", spec, folder, secret_env))
    if "namespace" in kust:
        for d in docs:
            if d["kind"] not in NAMESPACED_NOT:
                d["metadata"]["namespace"] = kust["namespace"]
    return docs


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return render()


def _one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _pod(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def _pods(docs: list[dict]):
    for d in docs:
        if d["kind"] in WORKLOADS:
            yield d, _pod(d)


def _containers(pod: dict) -> list[dict]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def _k8s_env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _services_for(docs: list[dict], host: str, port: int) -> list[dict]:
    return [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == host
            and any(p["port"] == port for p in d["spec"]["ports"])]


def _routes(path: str) -> set[str]:
    return set(re.findall(r"\.route\(\s*\"([^\"]+)\"", _read(ROOT / path)))


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return int(match.group(1))


def _secret_keys() -> set[str]:
    return set(_env_file_keys(SECRETS_EXAMPLE))


# --------------------------------------------------------------------------
# Rendering and schemas


def test_kustomization_renders_the_whole_topology(docs):
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for needed in [("Deployment", "gateway"), ("PodDisruptionBudget", "gateway"),
                   ("Service", "gateway"), ("Service", "gateway-fleet"),
                   ("DaemonSet", "edge-worker"), ("StatefulSet", "postgres"),
                   ("StatefulSet", "redis"), ("Deployment", "mock-cloud"),
                   ("Job", "gateway-seed"), ("Secret", "cloud-edge-secrets"),
                   ("ConfigMap", "gateway-seed-script"), ("ConfigMap", "fetch-model-script")]:
        assert needed in kinds, f"{needed} missing from deploy/k8s"
    assert len(kinds) == len(docs), "an object is defined twice"


def test_kubectl_kustomize_renders_the_same_objects(tmp_path):
    """The real kustomize (kubectl's) agrees with the renderer above, given
    the secrets file k8s-env.sh writes."""
    kubectl = shutil.which("kubectl")
    assert kubectl and subprocess.run([kubectl, "kustomize", "--help"],
                                      capture_output=True).returncode == 0, (
        "kubectl with kustomize is needed (scripts/setup.sh installs it)")
    for folder in ("deploy", "scripts"):
        shutil.copytree(ROOT / folder, tmp_path / folder,
                        ignore=shutil.ignore_patterns("secrets.env"))
    env_file = tmp_path / "deploy" / "k8s" / "secrets.env"
    subprocess.run([str(ENV_SCRIPT), str(env_file)], check=True, capture_output=True)
    out = subprocess.run([kubectl, "kustomize", str(tmp_path / "deploy" / "k8s")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    theirs = [d for d in yaml.safe_load_all(out.stdout) if d]
    ours = render(tmp_path / "deploy" / "k8s", env_file)
    generated = {d["metadata"]["name"] for d in ours if d["kind"] in ("ConfigMap", "Secret")}

    def key(d: dict) -> tuple[str, str, str | None]:
        name = d["metadata"]["name"]
        base = name.rsplit("-", 1)[0]
        if d["kind"] in ("ConfigMap", "Secret") and base in generated:
            name = base
        return d["kind"], name, d["metadata"].get("namespace")

    assert sorted(map(key, theirs)) == sorted(map(key, ours))
    secret = next(d for d in theirs if d["kind"] == "Secret")
    assert set(secret["data"]) == _secret_keys()
    # Generated names are suffixed with a hash; every reference follows it.
    refs = set(re.findall(r"(?:name|secretName): (cloud-edge-secrets\S*)", out.stdout))
    assert refs == {secret["metadata"]["name"]}, refs
    assert secret["metadata"]["name"] != "cloud-edge-secrets"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_against_the_schemas(docs, version):
    problems = []
    for d in docs:
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            first = str(e).splitlines()[0]
            problems.append(f"{d['kind']}/{d['metadata']['name']}: {first} at {list(e.path)}")
    assert not problems, "\n".join(problems)


def test_the_validator_rejects_a_wrong_manifest(docs):
    """The schemas are really applied: an unknown field and a wrong type fail."""
    gateway = yaml.safe_load(yaml.safe_dump(_one(docs, "Deployment", "gateway")))
    _pod(gateway)["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(gateway, K8S_VERSIONS[0], strict=True)
    pdb = yaml.safe_load(yaml.safe_dump(_one(docs, "PodDisruptionBudget", "gateway")))
    pdb["spec"]["selector"] = "app=gateway"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pdb, K8S_VERSIONS[0], strict=True)


# --------------------------------------------------------------------------
# Secrets and privileges


def test_no_secret_value_is_committed(docs):
    kust = yaml.safe_load(_read(K8S / "kustomization.yaml"))
    for path in sorted(K8S.glob("*.yaml")):
        for d in yaml.safe_load_all(_read(path)):
            assert not d or d.get("kind") != "Secret", f"{path.name} defines a Secret"
    for spec in kust.get("secretGenerator", []):
        assert not spec.get("literals") and not spec.get("files"), f"{spec['name']}: literal values"
        for rel in spec["envs"]:
            ignored = subprocess.run(["git", "check-ignore", "-q", str(K8S / rel)], cwd=ROOT)
            assert ignored.returncode == 0, f"{rel} is not git-ignored"
    assert all(v == "" for v in _env_file_keys(SECRETS_EXAMPLE).values()), "the example holds values"
    # Credentials reach the containers only from the Secret.
    for workload, pod in _pods(docs):
        for c in _containers(pod):
            for name, e in _k8s_env(c).items():
                if SECRET_NAMES.search(name):
                    assert "value" not in e, f"{workload['metadata']['name']}/{c['name']}: {name} is literal"
                    ref = e["valueFrom"]["secretKeyRef"]
                    assert ref["name"] == "cloud-edge-secrets" and ref["key"] in _secret_keys(), ref


def test_secret_and_config_map_references_resolve(docs):
    configmaps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    for workload, pod in _pods(docs):
        where = workload["metadata"]["name"]
        for vol in pod.get("volumes", []):
            if "secret" in vol:
                assert vol["secret"]["secretName"] == "cloud-edge-secrets", where
                assert {i["key"] for i in vol["secret"]["items"]} <= _secret_keys(), where
            if "configMap" in vol:
                assert vol["configMap"]["name"] in configmaps, f"{where}: {vol['configMap']['name']}"
        mounts = {m["name"] for c in _containers(pod) for m in c.get("volumeMounts", [])}
        claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        assert mounts <= {v["name"] for v in pod.get("volumes", [])} | claims, where


def test_every_container_runs_unprivileged(docs):
    app_uid = int(re.search(r"useradd[^\n]*--uid (\d+)", _read(DOCKERFILE)).group(1))
    for workload, pod in _pods(docs):
        where = workload["metadata"]["name"]
        psc = pod["securityContext"]
        assert psc.get("runAsNonRoot") is True, f"{where}: runAsNonRoot"
        assert psc.get("runAsUser", 0) != 0, f"{where}: runs as root"
        assert not pod.get("hostNetwork") and not pod.get("hostPID"), where
        for c in _containers(pod):
            sc = c.get("securityContext", {})
            name = f"{where}/{c['name']}"
            assert sc.get("allowPrivilegeEscalation") is False, f"{name}: privilege escalation"
            assert not sc.get("privileged"), f"{name}: privileged"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: capabilities"
            assert "add" not in sc.get("capabilities", {}), f"{name}: adds capabilities"
            assert sc.get("readOnlyRootFilesystem") is True, f"{name}: writable root"
            assert sc.get("runAsUser", psc["runAsUser"]) != 0, f"{name}: root"
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(part, {})), f"{name}: no {part}"
            # The project's images run as their `app` user.
            if c["image"].startswith("cloud-edge/"):
                assert sc.get("runAsUser", psc["runAsUser"]) == app_uid, f"{name}: uid"


# --------------------------------------------------------------------------
# Gateways


def test_gateway_configuration_matches_the_binary_and_compose(docs):
    compose = yaml.safe_load(_read(COMPOSE))["services"]
    deployment = _one(docs, "Deployment", "gateway")
    pod = _pod(deployment)
    (c,) = pod["containers"]
    env = _k8s_env(c)
    fields = gateway_config_fields()
    for key in env:
        if key.startswith("GATEWAY_"):
            assert key[len("GATEWAY_"):].lower() in fields, f"{key} is not a gateway setting"
    # The same settings as compose's gateways (traces aside: they are
    # optional, and this topology runs no collector).
    wanted = {k for k in _env(compose["gateway-1"]) if not k.startswith("OTEL_")}
    assert wanted <= set(env), wanted - set(env)
    assert c["args"] == compose["gateway-1"]["command"]
    assert deployment["spec"]["replicas"] == 2
    assert env["GATEWAY_LISTEN"]["value"] == f"0.0.0.0:{GATEWAY_PORT}"
    assert [p["containerPort"] for p in c["ports"]] == [GATEWAY_PORT]
    seed_key_env = re.search(r"--api-key-env\s+([A-Z_]+)", _read(SEED)).group(1)
    assert env[seed_key_env]["valueFrom"]["secretKeyRef"]["key"] == "MOCK_CLOUD_API_KEY"
    assert "secretKeyRef" in env["GATEWAY_DATABASE_URL"]["valueFrom"]
    # Redis is the in-cluster Service.
    redis = re.fullmatch(r"redis://([a-z0-9-]+):(\d+)/\d+", env["GATEWAY_REDIS_URL"]["value"])
    assert redis and _services_for(docs, redis.group(1), int(redis.group(2)))
    # The worker token file lies in a mounted Secret.
    token = Path(env["GATEWAY_WORKER_TOKEN_FILE"]["value"])
    _check_secret_file(pod, c, token)
    # The stop grace period of compose.
    assert pod["terminationGracePeriodSeconds"] == _seconds(compose["gateway-1"]["stop_grace_period"])


def _check_secret_file(pod: dict, container: dict, path: Path) -> None:
    mount = next((m for m in container["volumeMounts"] if Path(m["mountPath"]) == path.parent), None)
    assert mount and mount.get("readOnly") is True, f"{path} is not in a read-only mount"
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert {i["path"] for i in volume["secret"]["items"]} >= {path.name}, f"{path} not in the Secret"


def _probe_path(container: dict, kind: str, port: int) -> str:
    probe = container[kind]["httpGet"]
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    assert ports.get(probe["port"], probe["port"]) == port, f"{kind} on {probe['port']}"
    return probe["path"]


def test_gateway_probes_hit_real_routes(docs):
    routes = _routes("gateway/src/http/mod.rs")
    (c,) = _pod(_one(docs, "Deployment", "gateway"))["containers"]
    assert _probe_path(c, "readinessProbe", GATEWAY_PORT) == "/readyz"
    assert _probe_path(c, "livenessProbe", GATEWAY_PORT) == "/healthz"
    assert {"/readyz", "/healthz"} <= routes


def test_gateway_disruption_budget_selects_the_deployment(docs):
    deployment = _one(docs, "Deployment", "gateway")
    pdb = _one(docs, "PodDisruptionBudget", "gateway")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["minAvailable"] == 1
    assert _selects(pdb["spec"]["selector"]["matchLabels"], labels)
    assert deployment["spec"]["selector"]["matchLabels"] == pdb["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]


def test_services_select_pods_and_ports(docs):
    pods = [(d["spec"]["template"]["metadata"]["labels"], _pod(d)) for d in docs if d["kind"] in WORKLOADS]
    for svc in (d for d in docs if d["kind"] == "Service"):
        name = svc["metadata"]["name"]
        # Nothing leaves the cluster except through the Ingress.
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", f"{name} is exposed"
        selected = [pod for labels, pod in pods if _selects(svc["spec"]["selector"], labels)]
        assert selected, f"Service {name} selects no pod"
        for port in svc["spec"]["ports"]:
            for pod in selected:
                ports = {(p.get("name"), p["containerPort"]) for c in pod["containers"] for p in c.get("ports", [])}
                target = port.get("targetPort", port["port"])
                assert any(target in pair for pair in ports), f"{name}: no container port {target}"
    fleet = _one(docs, "Service", "gateway-fleet")
    public = _one(docs, "Service", "gateway")
    assert fleet["spec"]["selector"] == public["spec"]["selector"]
    assert [p["port"] for p in public["spec"]["ports"]] == [GATEWAY_PORT]


def test_ingress_exposes_only_the_api(docs):
    routes = _routes("gateway/src/http/mod.rs")
    ingresses = [d for d in docs if d["kind"] == "Ingress"]
    for ing in ingresses:
        for rule in ing["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                assert p["path"] in ("/v1", "/healthz"), f"Ingress exposes {p['path']}"
                assert any(r == p["path"] or r.startswith(p["path"] + "/") for r in routes), p["path"]
                assert p["backend"]["service"]["name"] == "gateway"
                assert "/metrics".startswith(p["path"]) is False and "/fleet/workers".startswith(p["path"]) is False
        assert "defaultBackend" not in ing["spec"]


def test_network_policies_name_real_pods_and_ports(docs):
    labels = {d["metadata"]["name"]: (d["spec"]["template"]["metadata"]["labels"], _pod(d))
              for d in docs if d["kind"] in WORKLOADS}
    covered = set()
    for pol in (d for d in docs if d["kind"] == "NetworkPolicy"):
        name = pol["metadata"]["name"]
        targets = [pod for lab, pod in labels.values() if _selects(pol["spec"]["podSelector"]["matchLabels"], lab)]
        assert targets, f"NetworkPolicy {name} selects no pod"
        covered |= {w for w, (lab, _) in labels.items() if _selects(pol["spec"]["podSelector"]["matchLabels"], lab)}
        ports = {p["containerPort"] for pod in targets for c in pod["containers"] for p in c.get("ports", [])}
        for rule in pol["spec"]["ingress"]:
            assert {p["port"] for p in rule["ports"]} <= ports, f"{name}: ports {rule['ports']}"
            for peer in rule["from"]:
                if "podSelector" in peer:
                    sel = peer["podSelector"]["matchLabels"]
                    assert any(_selects(sel, lab) for lab, _ in labels.values()), f"{name}: {sel} selects no pod"
    # The stores and the workers accept only the pods that use them.
    assert {"postgres", "redis", "edge-worker", "mock-cloud"} <= covered


# --------------------------------------------------------------------------
# Edge workers


def test_edge_workers_are_pinned_to_edge_nodes(docs):
    ds = _one(docs, "DaemonSet", "edge-worker")
    pod = _pod(ds)
    assert pod["nodeSelector"] == {EDGE_LABEL: ""}
    assert any(t["key"] == EDGE_LABEL and t["operator"] == "Exists" and t["effect"] == "NoSchedule"
               for t in pod["tolerations"])
    assert "KubeEdge" in _read(K8S / "edge-worker.yaml")


def test_edge_worker_configuration_matches_the_binary_and_compose(docs):
    compose = yaml.safe_load(_read(COMPOSE))["services"]
    pod = _pod(_one(docs, "DaemonSet", "edge-worker"))
    (c,) = pod["containers"]
    env = _k8s_env(c)
    envs = clap_envs("edge-worker/src/config.rs")
    # Variables only referenced by others ($(POD_IP)) come from the downward API.
    helpers = {n for e in env.values() for n in re.findall(r"\$\(([A-Z_]+)\)", e.get("value", ""))}
    for key in env:
        assert key in envs or key == "RUST_LOG" or key in helpers, f"{key} is not an edge worker variable"
    for key in helpers:
        assert env[key]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert list(env).index(key) < list(env).index("EDGE_ADVERTISE_URL"), "referenced before defined"
    assert env["EDGE_ADVERTISE_URL"]["value"] == f"http://$(POD_IP):{EDGE_PORT}"
    compose_env = _env(compose["edge-worker-1"])
    wanted = {k for k in compose_env if not k.startswith("OTEL_")}  # no collector here
    assert wanted <= set(env), wanted - set(env)
    for key in ("EDGE_MAX_RUNNING", "EDGE_MAX_WAITING", "EDGE_DRAIN_TIMEOUT_S", "EDGE_MODEL_ID",
                "EDGE_WORKER_TOKEN_FILE", "EDGE_HEARTBEAT_MS"):
        assert env[key]["value"] == compose_env[key], key
    # Registration goes to the internal Service of the gateways.
    url = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", env["EDGE_GATEWAY_URL"]["value"])
    services = _services_for(docs, url.group(1), int(url.group(2)))
    assert services, f"no Service {url.group(0)}"
    gateway_labels = _one(docs, "Deployment", "gateway")["spec"]["template"]["metadata"]["labels"]
    assert _selects(services[0]["spec"]["selector"], gateway_labels)
    assert "/fleet/workers" in _routes("gateway/src/http/mod.rs")
    _check_secret_file(pod, c, Path(env["EDGE_WORKER_TOKEN_FILE"]["value"]))
    # Flags, port and probes.
    longs = clap_longs("edge-worker/src/config.rs")
    args = dict(zip(c["args"][::2], c["args"][1::2]))
    assert all(flag[2:] in longs for flag in args), args
    assert args == dict(zip(compose["edge-worker-1"]["command"][::2], compose["edge-worker-1"]["command"][1::2]))
    assert args["--listen"] == f"0.0.0.0:{EDGE_PORT}"
    routes = _routes("edge-worker/src/routes.rs")
    assert _probe_path(c, "readinessProbe", EDGE_PORT) == "/readyz"
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert _probe_path(c, kind, EDGE_PORT) in routes
    # SIGTERM drains for EDGE_DRAIN_TIMEOUT_S before the kill.
    assert pod["terminationGracePeriodSeconds"] > int(env["EDGE_DRAIN_TIMEOUT_S"]["value"])


def test_edge_worker_model_comes_from_the_fetch_script(docs):
    pod = _pod(_one(docs, "DaemonSet", "edge-worker"))
    (c,) = pod["containers"]
    (init,) = pod["initContainers"]
    model = Path(dict(zip(c["args"][::2], c["args"][1::2]))["--model-path"])
    assert model.name == MODEL_FILE
    worker_mount = next(m for m in c["volumeMounts"] if Path(m["mountPath"]) == model.parent)
    assert worker_mount.get("readOnly") is True
    cache_dir = _k8s_env(init)["MODEL_CACHE_DIR"]["value"]
    init_mount = next(m for m in init["volumeMounts"] if m["mountPath"] == cache_dir)
    assert init_mount["name"] == worker_mount["name"], "the fetch fills another volume"
    # The script is the repository's, from the generated ConfigMap.
    script = Path(init["command"][-1])
    script_mount = next(m for m in init["volumeMounts"] if Path(m["mountPath"]) == script.parent)
    volume = next(v for v in pod["volumes"] if v["name"] == script_mount["name"])
    cm = _one(docs, "ConfigMap", volume["configMap"]["name"])
    assert cm["data"][script.name] == _read(FETCH_SCRIPT)
    compose = yaml.safe_load(_read(COMPOSE))["services"]["model-fetch"]
    assert init["image"] == compose["image"]
    assert init["command"][0] == compose["entrypoint"][0]


# --------------------------------------------------------------------------
# Seed, databases, env script


def test_seed_job_runs_the_seed_script_once_postgres_answers(docs):
    job = _one(docs, "Job", "gateway-seed")
    pod = _pod(job)
    (c,) = pod["containers"]
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    script = Path(c["command"][-1])
    mount = next(m for m in c["volumeMounts"] if Path(m["mountPath"]) == script.parent)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert _one(docs, "ConfigMap", volume["configMap"]["name"])["data"][script.name] == _read(SEED)
    assert c["image"] == _pod(_one(docs, "Deployment", "gateway"))["containers"][0]["image"]
    env = _k8s_env(c)
    compose_env = _env(yaml.safe_load(_read(COMPOSE))["services"]["gateway-seed"])
    for key in ("GATEWAY_DATABASE_URL", "CLOUD_API_KEY", "SEED_TENANT", "SEED_MODEL", "SEED_DIR"):
        assert key in env and key in compose_env, key
    wait = " ".join(pod["initContainers"][0]["command"])
    host = re.search(r"pg_isready -h ([a-z0-9-]+) -p (\d+)", wait)
    assert host and _services_for(docs, host.group(1), int(host.group(2))), wait
    # The seed's default cloud URL names the mock cloud's Service.
    cloud = re.search(r"SEED_CLOUD_URL:=http://([a-z0-9-]+):(\d+)}", _read(SEED))
    assert _services_for(docs, cloud.group(1), int(cloud.group(2))) and int(cloud.group(2)) == MOCK_PORT


def test_databases_match_compose(docs):
    compose = yaml.safe_load(_read(COMPOSE))["services"]
    for name in ("postgres", "redis"):
        sts = _one(docs, "StatefulSet", name)
        assert sts["spec"]["replicas"] == 1
        (c,) = _pod(sts)["containers"]
        assert c["image"] == compose[name]["image"]
        assert "readinessProbe" in c
    assert _pod(_one(docs, "StatefulSet", "redis"))["containers"][0]["command"] == compose["redis"]["command"]


def test_env_script_writes_every_secret_key_once(tmp_path):
    env_file = tmp_path / "secrets.env"
    subprocess.run([str(ENV_SCRIPT), str(env_file)], check=True, capture_output=True)
    first = _env_file_keys(env_file)
    assert set(first) == _secret_keys()
    assert all(first.values())
    assert env_file.stat().st_mode & 0o777 == 0o600
    url = first["GATEWAY_DATABASE_URL"]
    assert url == f"postgres://gateway:{first['POSTGRES_PASSWORD']}@postgres:5432/gateway"
    subprocess.run([str(ENV_SCRIPT), str(env_file)], check=True, capture_output=True)
    assert _env_file_keys(env_file) == first
    # The URL points at the Postgres Service and the user and database it creates.
    docs = render()
    assert _services_for(docs, "postgres", 5432)
    pg = _k8s_env(_pod(_one(docs, "StatefulSet", "postgres"))["containers"][0])
    assert pg["POSTGRES_USER"]["value"] == "gateway" and pg["POSTGRES_DB"]["value"] == "gateway"
