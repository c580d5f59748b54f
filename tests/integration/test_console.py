"""The operator console in headless Chromium (Debian's chromium + chromium-driver,
python3-selenium) against real httpd + Redis: the daily workflow, text-only
rendering, cross-site writes, layout, keyboard and labels, and the load figures
of a 1,000-registration list. Plus the same-origin rule over plain HTTP.

Credentials: Chromium gets the Basic Authorization header through CDP
Network.setExtraHTTPHeaders, so every request it makes carries them, like
cached Basic credentials, including requests a page of another origin makes.
Screenshots go to $CERTGATE_CONSOLE_SHOTS (default build/console-shots; the
ones in docs/console/ are made with CERTGATE_CONSOLE_SHOTS=docs/console)."""
import base64
import csv
import datetime
import hashlib
import http.server
import io
import json
import os
import shutil
import tempfile
import threading
import time

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from admin import Admin, error_code, seed
from clients import get
from conftest import SERVERS, Stack
import harness
from harness import ROOT, flush_store, free_port
from pki import make_cert
from test_admin import redis_snapshot

GATED = "/gated/ok.txt"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = os.environ.get("CERTGATE_CONSOLE_SHOTS") or os.path.join(ROOT, "build", "console-shots")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")



class Browser:
    """One headless Chromium for the module; login() switches the Basic user."""

    def __init__(self, stack):
        self.stack = stack
        self.profile = tempfile.mkdtemp(prefix="certgate-chromium-")
        os.chmod(self.profile, 0o755)
        self.downloads = os.path.join(self.profile, "downloads")
        os.makedirs(self.downloads)
        o = webdriver.ChromeOptions()
        o.binary_location = CHROMIUM
        for a in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage",
                  "--ignore-certificate-errors", "--user-data-dir=" + self.profile,
                  "--window-size=1280,900", "--no-first-run", "--disable-extensions"):
            o.add_argument(a)
        if os.geteuid() == 0:
            o.add_argument("--no-sandbox")
        self.d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=o)
        self.d.set_script_timeout(20)
        self.d.execute_cdp_cmd("Network.enable", {})
        self.d.execute_cdp_cmd("Page.setDownloadBehavior",
                               {"behavior": "allow", "downloadPath": self.downloads})
        # Record alert() calls as well: a blocked page must not hide one.
        self.d.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source":
            "window.alert = function () { document.documentElement.setAttribute('data-alerted', '1'); };"})
        self.base = stack.httpd.url("/admin/console/")
        self.user = None

    def close(self):
        self.d.quit()
        shutil.rmtree(self.profile, ignore_errors=True)

    def login(self, user):
        token = base64.b64encode(("%s:%s" % (user, self.stack.httpd.admin_users[user])).encode())
        self.d.execute_cdp_cmd("Network.setExtraHTTPHeaders",
                               {"headers": {"Authorization": "Basic " + token.decode()}})
        self.user = user

    def open(self, frag="certs", width=1280):
        """Load the console afresh (a new user's whoami) on #/frag; wait until drawn."""
        self.d.set_window_size(width, 900)
        self.d.get("about:blank")
        self.d.get(self.base + "#/" + frag)
        self.wait(lambda d: d.find_element(By.ID, "main").get_attribute("data-ready") == frag)

    def wait(self, cond, timeout=15):
        # The console redraws whole screens: an element found may be replaced at once.
        return WebDriverWait(self.d, timeout, poll_frequency=0.05,
                             ignored_exceptions=(StaleElementReferenceException,)).until(cond)

    def wait_text(self, text, timeout=15):
        self.wait(lambda d: text in d.find_element(By.ID, "main").text, timeout)

    def main_text(self):
        return self.d.find_element(By.ID, "main").text

    def button(self, text):
        def find(d):
            for b in d.find_elements(By.TAG_NAME, "button"):
                if b.text == text and b.is_displayed():
                    return b
            return False
        return self.wait(find, timeout=5)

    def field(self, label):
        """The value shown for a label in a field list (dl.fields), or None."""
        return self.d.execute_script(
            "for (const dt of document.querySelectorAll('main dl.fields dt'))"
            "  if (dt.textContent === arguments[0]) return dt.nextElementSibling.textContent;"
            "return null;", label)

    def fields(self):
        return dict(self.d.execute_script(
            "return [...document.querySelectorAll('main dl.fields dt')]"
            ".map(dt => [dt.textContent, dt.nextElementSibling.textContent]);"))

    def shot(self, name):
        os.makedirs(SHOTS, exist_ok=True)
        self.d.execute_script("document.getElementById('notice').textContent = '';")
        self.d.save_screenshot(os.path.join(SHOTS, name + ".png"))

    def fetch(self, method, path):
        """A request made by the console's own origin (fetch from the page)."""
        return self.d.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('../' + arguments[1], {method: arguments[0]})"
            ".then(r => r.json()).then(done, e => done({error: String(e)}));", method, path)

    def alerted(self):
        try:
            self.d.switch_to.alert.dismiss()
            return True
        except NoAlertPresentException:
            return self.d.execute_script(
                "return document.documentElement.getAttribute('data-alerted') === '1';")


@pytest.fixture(scope="module")
def stack(pki):
    s = Stack(pki)
    yield s
    s.close()


@pytest.fixture(scope="module")
def browser(stack):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail("chromium and chromium-driver are not installed: run 'make deps'")
    b = Browser(stack)
    yield b
    b.close()


@pytest.fixture(autouse=True)
def clean(stack):
    flush_store(stack.r)
    seed(stack.r)


@pytest.fixture
def api(stack):
    return Admin(stack)


def status_of(stack, cid):
    return stack.r.hget("certgate:reg:" + cid, "status").decode()


def events(stack):
    return [{k.decode(): v.decode() for k, v in e[1].items()}
            for e in stack.r.xrange("certgate:events")]


def write_files(tmp_path, cert):
    paths = {}
    for name, data in (("leaf.pem", cert.pem), ("chain.pem", cert.der_chain_pem().encode()),
                       ("leaf.key", cert.key_pem())):
        p = tmp_path / name
        p.write_bytes(data)
        paths[name] = str(p)
    return paths


def local_minute(delta):
    """A datetime-local value (the browser's local time, which is ours)."""
    return (datetime.datetime.now() + delta).strftime("%Y-%m-%dT%H:%M")


def set_value(browser, elem_id, value):
    browser.d.execute_script(
        "const e = document.getElementById(arguments[0]); e.value = arguments[1];"
        "e.dispatchEvent(new Event('change'));", elem_id, value)


def gate_status(stack, cert, want, timeout=3.0):
    """The gate's answer once it has heard of the change (promised within 1 s)."""
    deadline = time.monotonic() + timeout
    while True:
        code = get(stack, GATED, cert=cert).status_code
        if code == want or time.monotonic() > deadline:
            return code
        time.sleep(0.1)


# ---------------------------------------------------------------- the workflow

def test_workflow_upload_approve_rotate_audit(stack, browser, api, pki, tmp_path):
    b = browser
    old_id = api.approved(pki.leaf_b, app="app1", user="dev1", manager="mgr1")
    files = write_files(tmp_path, pki.leaf)

    # A developer (devmgr is developer and manager of cust-1) uploads, checking first.
    b.login("devmgr")
    b.open("upload")
    assert "checked" in b.main_text() and "never stored" in b.main_text()
    Select(b.d.find_element(By.ID, "up-app")).select_by_value("app1")
    b.d.find_element(By.ID, "up-cert").send_keys(files["leaf.pem"])
    b.d.find_element(By.ID, "up-chain").send_keys(files["chain.pem"])
    b.d.find_element(By.ID, "up-key").send_keys(files["leaf.key"])
    b.button("Check against the policy").click()
    b.wait(lambda d: b.field("Policy") == "passes")
    assert b.field("Gate decision").startswith("deny (unregistered")
    chain = {k: v for k, v in b.fields().items() if k.startswith("Chain ")}
    assert len(chain) == 3 and all(v.startswith("ok (code 0)") for v in chain.values()), chain
    b.shot("upload")
    b.button("Upload").click()
    b.wait_text("Uploaded: status PENDING")
    new_id = b.d.find_element(By.CSS_SELECTOR, "main a[href^='#/cert/']").get_attribute(
        "href").rsplit("/", 1)[1]
    assert status_of(stack, new_id) == "PENDING"
    assert not stack.r.keys("*privateKey*") and b"PRIVATE" not in b"".join(
        v for v in stack.r.hgetall("certgate:reg:" + new_id).values())

    # The uploader cannot approve: the console says why, and the API refuses too.
    b.open("cert/" + new_id)
    why = b.d.find_element(By.ID, "why-not")
    assert "four-eyes" in why.text and why.is_displayed()
    approve = b.button("Approve")
    assert not approve.is_enabled() and approve.get_attribute("aria-describedby") == "why-not"
    refused = b.fetch("POST", "certs/%s/approve" % new_id)
    assert refused["code"] == "Transition.FourEyes", refused
    assert status_of(stack, new_id) == "PENDING"

    # Another manager approves, through the reason dialog.
    b.login("mgr1")
    b.open("certs")
    b.wait_text("Waiting for my approval (1)")
    b.open("cert/" + new_id)
    b.button("Approve").click()
    text = b.d.find_element(By.ID, "reason-text")
    b.wait(lambda d: text.is_displayed())
    text.send_keys("called the developer")
    text.send_keys(Keys.TAB, Keys.ENTER)      # to Confirm, by keyboard
    b.wait(lambda d: "APPROVED" in d.find_element(By.CSS_SELECTOR, "main .status").text)
    assert status_of(stack, new_id) == "APPROVED"
    b.shot("detail")

    # The gate lets that certificate in.
    assert gate_status(stack, pki.leaf, 200) == 200

    # Support schedules a cutover, cancels it, then starts one now and sees the overlap.
    b.login("sup1")
    b.open("rotations/app1")
    Select(b.d.find_element(By.ID, "rot-new")).select_by_value(new_id)
    Select(b.d.find_element(By.ID, "rot-old")).select_by_value(old_id)
    set_value(b, "rot-act", local_minute(datetime.timedelta(hours=2)))
    set_value(b, "rot-ret", local_minute(datetime.timedelta(days=2)))
    b.button("Schedule rotation").click()
    b.wait_text("SCHEDULED")
    b.button("Cancel this rotation").click()
    b.wait_text("CANCELLED")
    Select(b.d.find_element(By.ID, "rot-new")).select_by_value(new_id)
    Select(b.d.find_element(By.ID, "rot-old")).select_by_value(old_id)
    set_value(b, "rot-act", local_minute(datetime.timedelta(minutes=-2)))
    set_value(b, "rot-ret", local_minute(datetime.timedelta(days=7)))
    b.button("Schedule rotation").click()
    b.wait_text("OVERLAP")
    rot = b.d.find_element(By.CSS_SELECTOR, "section.rotation")
    assert rot.find_element(By.CSS_SELECTOR, ".timeline .overlap").is_displayed()
    sides = rot.find_elements(By.CSS_SELECTOR, ".side section")
    assert [s.find_element(By.TAG_NAME, "h3").text for s in sides] == ["Old certificate",
                                                                       "New certificate"]
    assert "app1 client next" in sides[0].text and "app1 client\n" in sides[1].text + "\n"
    b.d.execute_script("arguments[0].scrollIntoView()", rot)
    b.shot("rotation")
    rots = api.call("GET", "/apps/app1/rotations", "sup1").json()["items"]
    assert sorted(r["state"] for r in rots) == ["CANCELLED", "OVERLAP"]
    # Both are let in during the overlap.
    assert gate_status(stack, pki.leaf, 200) == 200
    assert gate_status(stack, pki.leaf_b, 200) == 200

    # The auditor finds every step, pages to the end, exports CSV.
    b.login("aud1")
    b.open("audit")
    b.d.find_element(By.ID, "af-appId").send_keys("app1", Keys.ENTER)
    b.wait_text("end of the log for these filters")
    shown = b.main_text()
    for action in ("cert.upload", "cert.approve", "rotation.schedule", "rotation.cancel"):
        assert action in shown, action
    b.shot("audit")
    for f in os.listdir(b.downloads):
        os.unlink(os.path.join(b.downloads, f))
    b.button("Export CSV (all pages)").click()
    path = os.path.join(b.downloads, "audit.csv")
    b.wait(lambda d: os.path.exists(path) and os.path.getsize(path) > 0)
    time.sleep(0.2)
    rows = list(csv.DictReader(io.StringIO(open(path).read())))
    steps = [(r["action"], r["user"]) for r in rows if r.get("certId") == new_id or
             r.get("cert_id") == new_id]
    assert ("cert.upload", "devmgr") in steps and ("cert.approve", "mgr1") in steps, rows
    assert sum(1 for r in rows if r["action"] == "rotation.schedule") == 2
    assert sum(1 for r in rows if r["action"] == "rotation.cancel") == 1
    # The refused self-approval left no event.
    assert [e["action"] for e in events(stack) if e.get("cert_id") == new_id and
            e["action"] == "cert.approve"] == ["cert.approve"]

    # The list, as a manager sees it (screenshot), with one more pending and one declined.
    api.upload(make_cert("billing client", issuer=pki.inter, days=400), user="dev1")
    declined = api.upload(make_cert("legacy client", issuer=pki.inter, days=400), user="dev1")
    api.call("POST", "/certs/%s/decline" % declined.json()["id"], "mgr1",
             json={"reason": "CN does not name the app"})
    b.login("mgr1")
    b.open("certs")
    b.shot("registrations")
    b.open("certs", width=390)
    b.shot("registrations-390")


def test_audit_pages_through_everything(stack, browser):
    # 250 events as the expiry scan writes them, straight into the stream.
    p = stack.r.pipeline(transaction=False)
    for i in range(250):
        p.xadd("certgate:events", {"time": "2026-01-01T00:00:00Z", "user": "certgate-expiry",
                                   "ip": "", "action": "cert.expiring", "cert_id": "c-%03d" % i,
                                   "app_id": "app1", "customer_id": "cust-1", "days_left": "7"})
    p.execute()
    b = browser
    b.login("aud1")
    b.open("audit")
    pages = []
    while True:
        b.wait(lambda d: "Page %d:" % (len(pages) + 1) in b.main_text())
        pages.append(b.d.execute_script(
            "return [...document.querySelectorAll('main tbody td.mono')].map(td => td.textContent);"))
        if "end of the log" in b.main_text():
            break
        b.button("Next page").click()
    assert [len(x) for x in pages] == [100, 100, 50]
    assert sum(pages, []) == ["c-%03d" % i for i in range(250)]
    assert not b.button("Next page").is_enabled()
    b.button("Previous page").click()
    b.wait_text("Page 2: 100 events; more follow")
    # The CSV follows the API's cursor past its 10,000-event answers: one file, one header.
    p = stack.r.pipeline(transaction=False)
    for i in range(250, 10250):
        p.xadd("certgate:events", {"time": "2026-01-01T00:00:00Z", "user": "certgate-expiry",
                                   "ip": "", "action": "cert.expiring", "cert_id": "c-%05d" % i})
    p.execute()
    for f in os.listdir(b.downloads):
        os.unlink(os.path.join(b.downloads, f))
    b.button("Export CSV (all pages)").click()
    path = os.path.join(b.downloads, "audit.csv")
    b.wait(lambda d: os.path.exists(path) and os.path.getsize(path) > 0, timeout=30)
    time.sleep(0.3)
    text = open(path).read()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 10250 and text.count("action") == 1
    assert [r["certId"] for r in rows[-2:]] == ["c-10248", "c-10249"]


# ---------------------------------------------------------------- roles

def test_role_aware(stack, browser, api, pki):
    cid = api.upload(pki.leaf, user="dev1").json()["id"]
    api.approved(pki.leaf_b, app="app1", user="dev1", manager="mgr1")
    b = browser
    nav = lambda: [a.text for a in b.d.find_elements(By.CSS_SELECTOR, "nav a")]
    writes = ("Approve", "Decline", "Inactivate", "Schedule rotation", "Upload")
    buttons = lambda: [e.text for e in b.d.find_elements(By.CSS_SELECTOR, "main button")]
    # An auditor reads everything and gets no write button anywhere.
    b.login("aud1")
    b.open("certs")
    assert nav() == ["Registrations", "Rotations", "Audit log"]
    b.wait_text("All (2)")
    for frag in ("cert/" + cid, "rotations/app1"):
        b.open(frag)
        assert not set(buttons()) & set(writes), (frag, buttons())
    assert b.d.find_elements(By.ID, "rot-new") == []
    # A developer of another customer sees none of cust-1's registrations.
    b.login("dev2")
    b.open("certs")
    assert nav() == ["Registrations", "Upload"]
    b.wait_text("All (0)")
    b.open("cert/" + cid)
    b.wait_text("Certificate.NotFound")
    # The uploader (a developer only) learns why it cannot approve.
    b.login("dev1")
    b.open("cert/" + cid)
    assert "Approve" not in buttons()
    assert "only a manager other than the uploader can approve" in b.d.find_element(By.ID, "why-not").text


def test_upload_by_drag_and_drop(stack, browser, pki):
    cert = make_cert("dropped client", issuer=pki.inter, days=400)
    browser.login("dev1")
    browser.open("upload")
    browser.d.execute_script("""
      const dt = new DataTransfer();
      dt.items.add(new File([arguments[0]], 'dropped.crt'));
      dt.items.add(new File([arguments[1]], 'chain.pem'));
      document.querySelector('.drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
    """, cert.pem.decode(), cert.der_chain_pem())
    assert browser.d.execute_script(
        "return [document.getElementById('up-cert').files[0].name,"
        " document.getElementById('up-chain').files[0].name];") == ["dropped.crt", "chain.pem"]
    browser.button("Upload").click()
    browser.wait_text("Uploaded: status PENDING")
    assert stack.r.get("certgate:fp:" + cert.fingerprint)


# ---------------------------------------------------------------- text only

def test_certificate_fields_render_as_text(stack, browser, api, pki):
    evil_cn = "<img src=x onerror=alert(1)>"
    evil = make_cert(evil_cn, issuer=pki.inter, days=400)
    r = api.upload(evil, user="dev1")
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    browser.login("mgr1")
    for frag in ("certs", "cert/" + cid):
        browser.open(frag)
        browser.wait_text(evil_cn)
        assert browser.d.find_elements(By.CSS_SELECTOR, "main img") == []
        assert not browser.alerted()
    assert browser.d.title.startswith("Registration: " + evil_cn)


# ---------------------------------------------------------------- cross-site writes

class _Attacker(http.server.BaseHTTPRequestHandler):
    page = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.page)))
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, *a):
        pass


def test_cross_site_form_post_changes_nothing(stack, browser, api, pki):
    cid = api.upload(pki.leaf, user="dev1").json()["id"]
    target = stack.httpd.url("/admin/certs/%s/approve" % cid)
    # An empty form body: exactly what approve accepts, so only the check stops it.
    page = ("<!doctype html><title>win a prize</title>"
            "<form id=f method=POST action='%s'></form>"
            "<script>document.getElementById('f').submit()</script>" % target).encode()
    handler = type("Attacker", (_Attacker,), {"page": page})
    port = free_port()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        before = redis_snapshot(stack.r)
        browser.login("mgr1")     # the manager's credentials go with every request
        browser.d.get("http://127.0.0.1:%d/" % port)
        browser.wait(lambda d: d.current_url.startswith(target) and
                     d.execute_script("return document.readyState") == "complete", timeout=10)
        assert status_of(stack, cid) == "PENDING"
        assert "Request.CrossSite" in browser.d.find_element(By.TAG_NAME, "body").text
    finally:
        srv.shutdown()
        srv.server_close()
    assert redis_snapshot(stack.r) == before      # nothing written, no event
    assert "CG06010: refused a cross-site admin POST /certs/%s/approve: Origin=http://127.0.0.1:%d " \
           "Sec-Fetch-Site=cross-site user=mgr1" % (cid, port) in stack.httpd.read_log()


@pytest.fixture(scope="module", params=SERVERS)
def any_stack(pki, request):
    """httpd's stack is the browser's; nginx's serves the same admin API and console."""
    if request.param == "httpd":
        yield request.getfixturevalue("stack")
        return
    s = Stack(pki, server=request.param)
    yield s
    s.close()


def test_same_origin_rule_over_http(any_stack, pki):
    stack = any_stack
    flush_store(stack.r)
    seed(stack.r)
    api = Admin(stack)
    cid = api.upload(pki.leaf, user="dev1").json()["id"]
    own = "https://localhost:%d" % stack.server.port
    writes = [("POST", "/certs/%s/approve" % cid, "mgr1", {}),
              ("POST", "/certs/%s/decline" % cid, "mgr1", {"json": {"reason": "x"}}),
              ("PATCH", "/apps/app1", "mgr1", {"json": {"name": "x"},
                                               "headers": {"If-Match": "*"}}),
              ("POST", "/certs", "dev1", {"json": {"certificate": pki.leaf_b.pem.decode(),
                                                  "chain": pki.leaf_b.der_chain_pem(),
                                                  "appId": "app1"}}),
              ("POST", "/check", "aud1", {"json": {"certificate": pki.leaf.pem.decode()}}),
              ("DELETE", "/apps/app1/rotations/r1", "sup1", {})]
    refused = [{"Origin": "https://evil.example"}, {"Origin": "null"},
               {"Origin": "http://localhost:%d" % stack.server.port},
               {"Origin": "https://localhost:%d" % (stack.server.port + 1)},
               {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
               {"Origin": own, "Sec-Fetch-Site": "cross-site"}]
    before = redis_snapshot(stack.r)
    for method, path, user, kw in writes:
        for h in refused:
            kw2 = dict(kw, headers=dict(kw.get("headers", {}), **h))
            r = api.call(method, path, user, **kw2)
            assert (r.status_code, error_code(r)) == (403, "Request.CrossSite"), (method, path, h)
            assert "Access-Control-Allow-Origin" not in r.headers
    assert redis_snapshot(stack.r) == before
    # Reads are not checked; same-origin, "none" and header-less clients write.
    assert api.call("GET", "/certs/" + cid, "mgr1",
                    headers={"Origin": "https://evil.example",
                             "Sec-Fetch-Site": "cross-site"}).status_code == 200
    r = api.call("POST", "/certs/%s/approve" % cid, "mgr1",
                 headers={"Origin": own, "Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 200, r.text
    r = api.call("POST", "/certs/%s/inactivate" % cid, "mgr1", json={"reason": "test"},
                 headers={"Sec-Fetch-Site": "none"})
    assert r.status_code == 200, r.text
    r = api.call("PATCH", "/apps/app1", "mgr1", json={"name": "curl"}, headers={"If-Match": "*"})
    assert r.status_code == 200, r.text
    assert harness.wait_for_line(stack.server.error_log, "CG06010")


def test_console_headers(any_stack):
    stack = any_stack
    seed(stack.r)
    for path in ("/admin/console/", "/admin/console/app.js", "/admin/console/app.css"):
        r = requests.get(stack.server.url(path), auth=("aud1", "pw-aud1"), verify=stack.server_ca,
                         headers={"Origin": "https://evil.example"}, timeout=10)
        assert r.status_code == 200
        assert r.headers["Content-Security-Policy"] == CSP
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Cache-Control"] == "no-store"
        assert r.headers["Referrer-Policy"] == "no-referrer"
        assert not [h for h in r.headers if h.lower().startswith("access-control-")]
        assert "<script>" not in r.text and "style=" not in r.text
    r = requests.get(stack.server.url("/admin/console"), auth=("aud1", "pw-aud1"),
                     verify=stack.server_ca, allow_redirects=False, timeout=10)
    assert r.status_code == 301 and r.headers["Location"] == "/admin/console/"
    r = requests.get(stack.server.url("/admin/whoami"), auth=("dev2", "pw-dev2"),
                     verify=stack.server_ca, timeout=10)
    assert r.json() == {"user": "dev2", "roles": ["developer"], "customer": "cust-2",
                        "seesAllCustomers": False, "selfApprove": False, "expiringSoonDays": 30}


# ---------------------------------------------------------------- layout, keyboard, labels

SCREENS = [("certs", "mgr1"), ("cert/{id}", "mgr1"), ("upload", "dev1"),
           ("rotations/app1", "sup1"), ("audit", "aud1")]

CONTROLS_JS = """
const out = [];
document.querySelectorAll('a[href], button, input, select, textarea').forEach((e, i) => {
  if (e.disabled || e.offsetParent === null && !e.classList.contains('skip')) return;
  e.setAttribute('data-kb', i);
  let name = '';
  if (e.labels && e.labels.length) name = e.labels[0].textContent;
  name = name || e.getAttribute('aria-label') || '';
  const lb = e.getAttribute('aria-labelledby');
  if (!name && lb) name = (document.getElementById(lb) || {}).textContent || '';
  if (!name && (e.tagName === 'A' || e.tagName === 'BUTTON')) name = e.textContent;
  out.push([String(i), e.tagName + (e.id ? '#' + e.id : ''), name.trim()]);
});
return out;
"""


def test_layout_keyboard_and_labels(stack, browser, api, pki):
    cid = api.approved(pki.leaf, app="app1", user="dev1", manager="mgr1")
    api.upload(pki.leaf_b, user="dev1")
    b = browser
    for frag, user in SCREENS:
        frag = frag.format(id=cid)
        b.login(user)
        for width in (1280, 390):
            b.open(frag, width=width)
            over = b.d.execute_script(
                "return [document.documentElement.scrollWidth, document.documentElement.clientWidth];")
            assert over[0] <= over[1], (frag, width, over)
        controls = b.d.execute_script(CONTROLS_JS)
        unnamed = [c for c in controls if not c[2]]
        assert not unnamed, (frag, unnamed)
        # Tab from the top of the page through every control.
        b.d.execute_script("document.activeElement && document.activeElement.blur();"
                           "window.scrollTo(0, 0);")
        seen = set()
        want = {c[0] for c in controls}
        # Date-time inputs take one Tab per part (day, month, year, hour, minute).
        for _ in range(len(controls) + 40):
            ActionChains(b.d).send_keys(Keys.TAB).perform()
            seen.add(b.d.execute_script("return document.activeElement.getAttribute('data-kb');"))
            if want <= seen:
                break
        missed = [c for c in controls if c[0] not in seen]
        assert not missed, (frag, missed)


# ---------------------------------------------------------------- 1,000 registrations

def seed_many(stack, api, pki, n):
    """n registrations of app1 shaped like a real upload's record, written in one pipeline."""
    tmpl_id = api.upload(pki.leaf, user="dev1").json()["id"]
    tmpl = stack.r.hgetall("certgate:reg:" + tmpl_id)
    now = int(time.time())
    p = stack.r.pipeline(transaction=False)
    for i in range(n):
        rid = "00000000-0000-4000-8000-%012d" % i
        fp = hashlib.sha256(b"console-%d" % i).hexdigest()
        rec = dict(tmpl)
        rec.update({b"id": rid, b"fingerprint": fp, b"common_name": "client %04d" % i,
                    b"valid_to": str(now + (i % 400 + 1) * 86400),
                    b"status": ("PENDING", "APPROVED", "DECLINED", "INACTIVATED")[i % 4]})
        p.hset("certgate:reg:" + rid, mapping=rec)
        p.set("certgate:fp:" + fp, rid)
        p.sadd("certgate:app:app1", rid)
        p.sadd("certgate:regs", rid)
    p.execute()
    return n + 1


def test_thousand_registrations_load(stack, browser, api, pki):
    total = seed_many(stack, api, pki, 999)
    browser.login("aud1")
    browser.open("certs")
    browser.wait_text("%d of %d registrations, page 1 of %d" % (total, total, (total + 49) // 50))
    m = browser.d.execute_script("""
      const nav = performance.getEntriesByType('navigation')[0];
      const res = performance.getEntriesByType('resource');
      const sum = (list, k) => list.reduce((a, e) => a + (e[k] || 0), 0);
      const assets = res.filter(e => /\\/console\\//.test(e.name)), apis = res.filter(e => !/\\/console\\//.test(e.name));
      return {render: performance.getEntriesByName('cg-rendered')[0].startTime,
              domContentLoaded: nav.domContentLoadedEventEnd,
              pageTransfer: nav.transferSize + sum(assets, 'transferSize'),
              pageBody: nav.decodedBodySize + sum(assets, 'decodedBodySize'),
              apiTransfer: sum(apis, 'transferSize'), apiBody: sum(apis, 'decodedBodySize'),
              apiRequests: apis.length,
              apiSpan: Math.max(...apis.map(e => e.responseEnd)) - Math.min(...apis.map(e => e.startTime))};""")
    m["registrations"] = total
    os.makedirs(os.path.join(ROOT, "build"), exist_ok=True)
    with open(os.path.join(ROOT, "build", "console-perf.json"), "w") as f:
        json.dump(m, f, indent=1)
    print("\nconsole, %d registrations: %s" % (total, json.dumps(m)))
    assert m["apiRequests"] == 3          # whoami and two pages of 500
    assert m["pageBody"] < 64 * 1024      # html + js + css
    assert m["render"] < 15000, m         # generous: two shared cores
    assert len(browser.d.find_elements(By.CSS_SELECTOR, "main tbody tr")) == 50

    # Chips count what the API derives (30 expiring-soon days).
    b = browser
    st = [("PENDING", "APPROVED", "DECLINED", "INACTIVATED")[i % 4] for i in range(999)]
    days = [i % 400 + 1 for i in range(999)]
    chips = {c.text.rsplit(" (", 1)[0]: int(c.text.rsplit("(", 1)[1][:-1])
             for c in b.d.find_elements(By.CSS_SELECTOR, ".chips .chip")}
    assert chips == {"All": 1000, "Pending": st.count("PENDING") + 1,
                     "Approved": st.count("APPROVED"),
                     "Expiring soon": sum(1 for s, d in zip(st, days)
                                          if s in ("PENDING", "APPROVED") and d <= 30),
                     "Expired": 0, "Declined": st.count("DECLINED"),
                     "Inactivated": st.count("INACTIVATED")}, chips
    # Sorted by expiry, soonest first; paging.
    first = b.d.find_element(By.CSS_SELECTOR, "main tbody tr td a").text
    assert first in ("client %04d" % i for i in range(999) if days[i] == 1)
    b.button("Next page").click()
    b.wait_text("1000 of 1000 registrations, page 2 of 20")
    # Search: CN, fingerprint prefix (with colons), app.
    search = b.d.find_element(By.ID, "search")
    fp = hashlib.sha256(b"console-123").hexdigest()
    for text, want in (("client 0123", 1), (":".join(fp[i:i + 2] for i in range(0, 8, 2)), 1),
                       ("app1", 1000), ("no such thing", 0)):
        search.clear()
        search.send_keys(text)
        b.wait_text("%d of 1000 registrations" % want)
    # CSV of the filtered list: every matching row, not just the page.
    search.clear()
    search.send_keys("client 01")
    b.wait_text("100 of 1000 registrations")
    for f in os.listdir(b.downloads):
        os.unlink(os.path.join(b.downloads, f))
    b.button("Export CSV").click()
    path = os.path.join(b.downloads, "registrations.csv")
    b.wait(lambda d: os.path.exists(path) and os.path.getsize(path) > 0)
    time.sleep(0.2)
    rows = list(csv.DictReader(io.StringIO(open(path).read())))
    assert len(rows) == 100 and all(r["commonName"].startswith("client 01") for r in rows)
