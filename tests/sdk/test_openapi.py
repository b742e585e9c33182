"""The public API against its own OpenAPI document (`GET /openapi.json`).

schemathesis generates requests from the document, valid and invalid, and
checks every answer: no server error, and status, content type, headers and
body as documented. The gateway runs with the mock cloud as its cloud
backend and as an on-premises stand-in (forced into the on-prem zone), so
that every request, whatever its privacy class, has a backend.
"""

import os
import subprocess

import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from conftest import GATEWAY_BIN, _admin, _wait_ready


@pytest.fixture(scope="session")
def api_gateway(mock_cloud, tmp_path_factory):
    db = tmp_path_factory.mktemp("openapi") / "gateway.db"
    _admin(db, "tenant", "create", "api")
    _admin(db, "backend", "add", "--name", "cloud", "--kind", "cloud", "--url", mock_cloud,
           "--model", "m=cloud-model", "--price-in", "0.5", "--price-out", "1.5")
    _admin(db, "backend", "add", "--name", "on-prem", "--kind", "cloud", "--zone", "on-prem",
           "--url", mock_cloud, "--model", "m=cloud-model", "--force-zone")
    _admin(db, "alias", "set", "auto", "m")
    key = _admin(db, "key", "create", "--tenant", "api")[0]["api_key"]
    env = dict(os.environ, GATEWAY_SQLITE_PATH=str(db), GATEWAY_MAX_BODY_BYTES="65536")
    proc = subprocess.Popen([str(GATEWAY_BIN), "serve", "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline().strip()
    base = line.removeprefix("gateway listening on").strip()
    try:
        _wait_ready(base + "/readyz")
        yield base, key
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def api_schema(api_gateway):
    base, _ = api_gateway
    return schemathesis.openapi.from_url(base + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_every_answer_is_as_documented(case, api_gateway):
    _, key = api_gateway
    response = case.call(headers={"Authorization": f"Bearer {key}"}, timeout=30)
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
