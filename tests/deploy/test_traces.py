"""Checks that the trace path of the deployment files matches the code.

The gateways and edge workers export OTLP over HTTP/protobuf (the `otel`
crate refuses any other protocol); the compose file must point them at the
collector's HTTP receiver, the collector must forward traces to the trace
store, and Grafana's trace datasource must read that store. Kubernetes
manifests that name an OTLP endpoint must name a Service they define.

Run: .venv/bin/python -m pytest -q tests/deploy
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
OTEL = ROOT / "deploy" / "otel-collector" / "config.yaml"
DATASOURCES = ROOT / "dashboards" / "provisioning" / "datasources"
K8S = ROOT / "deploy" / "k8s"
OTEL_CRATE = ROOT / "otel" / "src" / "lib.rs"
WORKSPACE = ROOT / "Cargo.toml"

EXPORTERS = ["gateway-1", "gateway-2", "edge-worker-1", "edge-worker-2"]
TRACE_STORE = "jaeger"
# Jaeger's ports: OTLP over HTTP in, its query API and UI out.
STORE_OTLP_HTTP, STORE_QUERY = 4318, 16686


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(_read(COMPOSE))["services"]


@pytest.fixture(scope="module")
def collector() -> dict:
    return yaml.safe_load(_read(OTEL))


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def test_the_code_exports_only_otlp_over_http_protobuf():
    text = _read(OTEL_CRATE)
    assert "Protocol::HttpBinary" in text
    assert '!= "http/protobuf"' in text, "other protocols must be refused"
    otlp = re.search(r"^opentelemetry-otlp\s*=\s*\{(.*)\}\s*$", _read(WORKSPACE), re.M)
    assert otlp, "opentelemetry-otlp is a workspace dependency"
    assert '"http-proto"' in otlp.group(1)
    assert "grpc-tonic" not in otlp.group(1) and "http-json" not in otlp.group(1)


def test_exporters_point_at_the_collectors_http_receiver(services, collector):
    protocols = collector["receivers"]["otlp"]["protocols"]
    assert set(protocols) == {"http"}, "the collector receives only what is exported"
    http = protocols["http"]["endpoint"]
    assert http.startswith("0.0.0.0:")
    port = _port(http)
    assert "otlp" in collector["service"]["pipelines"]["traces"]["receivers"]
    honoured = _read(OTEL_CRATE)
    for name in EXPORTERS:
        env = _env(services[name])
        endpoint = urlparse(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert endpoint.scheme == "http", name
        assert endpoint.hostname == "otel-collector" and endpoint.port == port, name
        assert endpoint.path in ("", "/"), f"{name}: the exporter adds /v1/traces itself"
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf", name
        assert env.get("OTEL_SERVICE_NAME"), name
        for var in env:
            if var.startswith("OTEL_EXPORTER_OTLP"):
                assert var in honoured or var == "OTEL_EXPORTER_OTLP_PROTOCOL", var
    assert "otel-collector" in services
    # The gateway and worker images must be able to reach it: same network,
    # no service-level network overrides that would separate them.
    for name in (*EXPORTERS, "otel-collector", TRACE_STORE):
        assert "networks" not in services[name], name


def test_the_collector_forwards_traces_to_the_trace_store(services, collector):
    exporters = collector["service"]["pipelines"]["traces"]["exporters"]
    stores = [e for e in exporters if e.split("/")[0] in ("otlphttp", "otlp")]
    assert stores, f"traces go nowhere a user can open: {exporters}"
    for name in stores:
        endpoint = collector["exporters"][name]["endpoint"]
        url = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
        assert url.hostname == TRACE_STORE
        assert url.port == STORE_OTLP_HTTP and name.startswith("otlphttp"), endpoint
    assert TRACE_STORE in services
    assert services[TRACE_STORE]["image"].startswith("jaegertracing/")
    deps = services["otel-collector"].get("depends_on") or {}
    assert TRACE_STORE in deps
    # Its UI has no authentication: loopback only.
    for port in services[TRACE_STORE].get("ports", []):
        assert str(port).startswith("127.0.0.1:") and str(port).endswith(f":{STORE_QUERY}")


def test_grafana_reads_the_trace_store():
    sources = [
        d
        for f in sorted(DATASOURCES.glob("*.y*ml"))
        for d in yaml.safe_load(_read(f))["datasources"]
    ]
    traces = [d for d in sources if d["type"] == "jaeger"]
    assert len(traces) == 1, sources
    assert traces[0]["url"] == f"http://{TRACE_STORE}:{STORE_QUERY}"
    assert traces[0]["uid"] == "jaeger"
    assert traces[0]["access"] == "proxy"


def _k8s_documents() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(_read(path)) if d]
    return docs


def _containers(doc: dict) -> list[dict]:
    spec = doc.get("spec") or {}
    template = (spec.get("jobTemplate") or {}).get("spec", spec).get("template") or {}
    pod = template.get("spec") or {}
    return pod.get("containers", []) + pod.get("initContainers", [])


def test_k8s_otlp_endpoints_name_services_that_exist():
    docs = _k8s_documents()
    assert docs
    services = {d["metadata"]["name"] for d in docs if d.get("kind") == "Service"}
    for doc in docs:
        for container in _containers(doc):
            for env in container.get("env", []):
                if env["name"].startswith("OTEL_EXPORTER_OTLP") and env["name"].endswith("ENDPOINT"):
                    host = urlparse(env.get("value", "")).hostname or ""
                    assert host.split(".")[0] in services, (
                        f"{doc['metadata']['name']} exports traces to {host}, not a Service here"
                    )
