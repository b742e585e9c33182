"""The admin dashboard in a real browser: Debian's headless Chromium driven
by Playwright. Signs in with an admin token, creates and revokes a key,
changes a policy weight and sees the next request routed elsewhere, and
opens every page with no console error (a Content-Security-Policy
violation is one). Screenshots of every page go to the test's output
directory (printed; kept by pytest under its basetemp).

The gateway runs in front of the real edge worker and the mock cloud, with
key and settings caches of ten minutes: whatever the next request sees was
made visible by the dashboard's own change, not by a cache expiring.
"""

import os
import re
import shutil

import httpx
import pytest
from playwright.sync_api import sync_playwright

from conftest import EDGE_MODEL_ID, GATEWAY_BIN, _admin, _wait_ready

import subprocess


def _chromium():
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Chromium is missing: scripts/setup.sh installs Debian's chromium package"
    return path


@pytest.fixture(scope="module")
def dash(edge_worker, mock_cloud, tmp_path_factory):
    db = tmp_path_factory.mktemp("dashboard") / "gateway.db"
    _admin(db, "tenant", "create", "shop")
    _admin(db, "backend", "add", "--name", "edge", "--kind", "edge", "--url", edge_worker,
           "--model", EDGE_MODEL_ID)
    # Fast but dear: the cost weight keeps requests on the edge, and only it.
    _admin(db, "backend", "add", "--name", "cloud", "--kind", "cloud", "--url", mock_cloud,
           "--model", f"{EDGE_MODEL_ID}=cloud-model", "--price-in", "0.5", "--price-out", "1.5",
           "--rtt-ms", "1", "--prefill-tps", "100000", "--decode-tps", "10000")
    _admin(db, "alias", "set", "auto", EDGE_MODEL_ID)
    key = _admin(db, "key", "create", "--tenant", "shop")[0]["api_key"]
    token = _admin(db, "admin-token", "create", "--name", "browser-test")[0]["token"]
    env = dict(os.environ, GATEWAY_SQLITE_PATH=str(db), GATEWAY_KEY_CACHE_MS="600000",
               GATEWAY_SETTINGS_CACHE_MS="600000", GATEWAY_POLL_INTERVAL_MS="200")
    proc = subprocess.Popen([str(GATEWAY_BIN), "serve", "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, text=True, env=env)
    base = proc.stdout.readline().strip().removeprefix("gateway listening on").strip()
    shots = tmp_path_factory.mktemp("dashboard-screenshots")
    try:
        _wait_ready(base + "/readyz")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=_chromium(), headless=True,
                                        args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            problems = []
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("dialog", lambda d: d.accept())
            yield Dash(base, key, token, page, problems, shots)
            browser.close()
        print(f"\ndashboard screenshots: {shots}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class Dash:
    def __init__(self, base, key, token, page, problems, shots):
        self.base, self.key, self.token = base, key, token
        self.page, self.problems, self.shots = page, problems, shots

    def open(self, path):
        response = self.page.goto(self.base + path)
        assert response.status == 200, (path, response.status)
        return response

    def shot(self, name):
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)

    def chat(self, key=None):
        return httpx.post(
            self.base + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key or self.key}"},
            json={"model": "auto", "messages": [{"role": "user", "content": "Say hi."}],
                  "max_tokens": 8, "temperature": 0},
            timeout=120,
        )

    def clean(self):
        assert self.problems == [], self.problems


def test_sign_in(dash):
    page = dash.page
    dash.open("/admin/fleet")
    assert page.url.endswith("/admin/login"), "no page without a session"
    dash.shot("00-sign-in")
    # A tenant key is no admin token.
    page.fill("#token", dash.key)
    page.click("button[type=submit]")
    page.locator("[role=alert]").wait_for()
    assert "not a valid admin token" in page.locator("[role=alert]").inner_text()
    # The refusal is a 401, which the browser logs; that one is expected.
    assert [p for p in dash.problems if "401" not in p] == [], dash.problems
    dash.problems.clear()
    page.fill("#token", dash.token)
    page.click("button[type=submit]")
    page.wait_for_url("**/admin/fleet")
    assert page.locator("h1").inner_text() == "Fleet"
    cookie = next(c for c in page.context.cookies() if c["name"] == "gw_admin_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/admin"
    assert dash.token not in page.content()
    dash.clean()


def test_create_and_revoke_a_key(dash):
    page = dash.page
    dash.open("/admin/keys")
    page.select_option("form[action='/admin/keys'] select[name=tenant]", "shop")
    page.fill("form[action='/admin/keys'] input[name=rpm]", "100")
    page.click("form[action='/admin/keys'] button[type=submit]")
    secret = page.locator("#new-key").inner_text().strip()
    assert secret.startswith("gw-")
    dash.shot("10-key-created")
    assert dash.chat(secret).status_code == 200
    # Shown once: the keys page never shows it again.
    dash.open("/admin/keys")
    assert secret not in page.content()
    row = page.locator("tr[data-key]", has_text=secret[:11])
    assert row.count() == 1
    row.locator("button", has_text="Revoke").click()
    page.wait_for_url("**/admin/keys?done=revoked")
    assert "Key revoked" in page.locator("[role=status]").inner_text()
    assert row.locator(".status").inner_text() == "revoked"
    dash.shot("11-key-revoked")
    answer = dash.chat(secret)
    assert answer.status_code == 401, answer.text
    dash.clean()


def test_a_policy_weight_changes_where_the_next_request_runs(dash):
    page = dash.page
    first = dash.chat()
    assert first.status_code == 200, first.text
    assert first.headers["x-gateway-backend"] == "edge"
    dash.open("/admin/policies")
    form = page.locator("form[data-tenant=shop]")
    form.locator("input[name=w_cost]").fill("0")
    form.locator("input[name=w_energy]").fill("0")
    form.locator("button[type=submit]").click()
    page.wait_for_url("**/admin/policies?done=policy")
    assert page.locator("form[data-tenant=shop] input[name=w_cost]").input_value() == "0"
    dash.shot("20-policy-saved")
    then = dash.chat()
    assert then.status_code == 200, then.text
    assert then.headers["x-gateway-backend"] == "cloud", then.headers
    # The decisions page explains both; the what-if page re-scores them.
    dash.open("/admin/decisions")
    assert page.locator("details.decision").count() >= 2
    page.locator("details.decision").first.click()
    assert page.locator("details.decision[open] tr.chosen").count() == 1
    dash.shot("21-decisions")
    dash.open("/admin/whatif?w_latency=0&w_energy=0&w_cost=1")
    assert page.locator("figure.chart").count() == 3
    assert page.locator(".stat .value").first.inner_text() != "0 / 0"
    dash.shot("22-whatif")
    dash.clean()


@pytest.mark.parametrize("path,title", [
    ("/admin/fleet", "Fleet"),
    ("/admin/decisions", "Routing decisions"),
    ("/admin/savings", "Savings against all-cloud"),
    ("/admin/whatif", "What-if: other policy weights"),
    ("/admin/keys", "Keys"),
    ("/admin/backends", "Backends"),
    ("/admin/policies", "Routing policies"),
    ("/admin/privacy", "Privacy rules"),
])
def test_every_page_opens_without_console_errors(dash, path, title):
    dash.open(path)
    dash.page.wait_for_load_state("networkidle")
    assert dash.page.locator("h1").inner_text() == title
    assert dash.page.locator("nav a.active").get_attribute("href") == path
    dash.shot("30" + path.replace("/", "-"))
    dash.clean()


def test_the_fleet_page_shows_the_live_worker_and_refreshes(dash):
    page = dash.page
    dash.open("/admin/fleet")
    card = page.locator("article.worker[data-backend=edge]")
    assert "healthy" in card.inner_text()
    assert "tok/s" in card.inner_text()
    # The warm-up ran alone: the worker's energy at one running is measured.
    assert re.search(r"energy by load\s*1: \d+\.\d{3}", card.inner_text()), card.inner_text()
    # The live section is fetched again in place without an error.
    with page.expect_response(lambda r: r.url.endswith("/admin/fleet") and r.status == 200):
        pass
    assert page.locator("section#live article.worker").count() == 2
    dash.clean()
