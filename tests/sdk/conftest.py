"""Fixtures that run the project's real binaries on loopback ports."""

import os
import pathlib
import subprocess
import time

import httpx
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
BIN = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"


def _start(cmd, banner):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith(banner):
        proc.kill()
        raise RuntimeError(f"unexpected first line from {cmd[0]}: {line!r}")
    return proc, line.removeprefix(banner).strip()


def _wait_ready(url, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready within {timeout} s")


@pytest.fixture(scope="session")
def model_path():
    assert MODEL.exists(), "run scripts/fetch-model.sh first (the test command does)"
    return MODEL


@pytest.fixture(scope="session")
def edge_worker(model_path):
    proc, base = _start(
        [str(BIN / "edge-worker"), "--model-path", str(model_path), "--listen", "127.0.0.1:0"],
        "edge-worker listening on",
    )
    try:
        _wait_ready(base + "/readyz")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=60)


# --- The gateway in front of the edge worker and the mock cloud ------------

import json  # noqa: E402  (kept with the fixtures that use it)

GATEWAY_BIN = pathlib.Path(os.environ.get("GATEWAY_BIN", BIN / "gateway"))
MOCK_CLOUD_BIN = pathlib.Path(os.environ.get("MOCK_CLOUD_BIN", BIN / "mock-cloud"))
EDGE_MODEL_ID = "smollm2-135m-instruct"
# Largest request body the SDK tests' gateway accepts (413 beyond it).
GATEWAY_MAX_BODY_BYTES = 65536


@pytest.fixture(scope="session")
def mock_cloud():
    """The mock OpenAI cloud, accepting only the upstream names the gateway maps to."""
    assert MOCK_CLOUD_BIN.exists(), f"{MOCK_CLOUD_BIN} missing: cargo build --release --workspace --bins"
    proc, base = _start(
        [str(MOCK_CLOUD_BIN), "--addr", "127.0.0.1:0", "--models", "cloud-model,cloud-only"],
        "mock-cloud listening on",
    )
    try:
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class Gateway:
    """A running gateway: its OpenAI base URL and the keys seeded for the tests."""

    def __init__(self, base, keys):
        self.base = base
        self.keys = keys


def _admin(db, *args):
    """Runs one admin subcommand against the test database; returns its JSON lines."""
    out = subprocess.run(
        [str(GATEWAY_BIN), "--sqlite-path", str(db), *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def gateway(edge_worker, mock_cloud, tmp_path_factory):
    """`gateway serve` on a temp SQLite file, seeded through the admin subcommands.

    Backends: the edge worker, a dear cloud serving the same model (so the idle
    edge wins), a cloud-only model (so a confidential request for it has no
    private route), a free cloud beside the edge for model "either", a
    disabled backend and a misconfigured one. Keys: a plain one, one limited to 1 request/min, one with a
    zero budget.
    """
    assert GATEWAY_BIN.exists(), f"{GATEWAY_BIN} missing: cargo build --release --workspace --bins"
    db = tmp_path_factory.mktemp("gateway") / "gateway.db"
    _admin(db, "tenant", "create", "sdk")
    _admin(db, "backend", "add", "--name", "edge", "--kind", "edge", "--url", edge_worker,
           "--model", EDGE_MODEL_ID, "--model", f"either={EDGE_MODEL_ID}")
    # "either" is served by the edge and by a free, fast cloud that wins on
    # cost: only privacy can keep a request for it on the premises.
    _admin(db, "backend", "add", "--name", "cloud-free", "--kind", "cloud", "--url", mock_cloud,
           "--model", "either=cloud-model", "--rtt-ms", "1", "--prefill-tps", "100000",
           "--decode-tps", "10000")
    # A model whose only backend is disabled (503 no_backend_available), and
    # one whose only backend does not serve what it is mapped to (502).
    _admin(db, "backend", "add", "--name", "parked", "--kind", "cloud", "--url", mock_cloud,
           "--model", "parked-model=cloud-model")
    _admin(db, "backend", "disable", "parked")
    _admin(db, "backend", "add", "--name", "misconfigured", "--kind", "cloud", "--url", mock_cloud,
           "--model", "broken-model=not-served")
    _admin(db, "backend", "add", "--name", "cloud", "--kind", "cloud", "--url", mock_cloud,
           "--model", f"{EDGE_MODEL_ID}=cloud-model", "--model", "cloud-only",
           "--price-in", "0.5", "--price-out", "1.5")
    _admin(db, "alias", "set", "auto", EDGE_MODEL_ID)
    keys = {
        "plain": _admin(db, "key", "create", "--tenant", "sdk")[0]["api_key"],
        "limited": _admin(db, "key", "create", "--tenant", "sdk", "--rpm", "1")[0]["api_key"],
        "broke": _admin(db, "key", "create", "--tenant", "sdk", "--budget", "0")[0]["api_key"],
    }
    env = dict(os.environ, GATEWAY_SQLITE_PATH=str(db),
               GATEWAY_MAX_BODY_BYTES=str(GATEWAY_MAX_BODY_BYTES),
               GATEWAY_POLL_INTERVAL_MS="200")
    proc = subprocess.Popen(
        [str(GATEWAY_BIN), "serve", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    line = proc.stdout.readline().strip()
    banner = "gateway listening on"
    if not line.startswith(banner):
        proc.kill()
        raise RuntimeError(f"unexpected first line from gateway: {line!r}")
    base = line.removeprefix(banner).strip()
    try:
        _wait_ready(base + "/readyz")
        yield Gateway(base + "/v1", keys)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
