"""Talking to the admin API as the harness users."""
import time

import requests


class Admin:
    def __init__(self, stack, base="/admin"):
        self.stack = stack
        self.base = base

    def call(self, method, path, user=None, **kw):
        auth = (user, self.stack.server.admin_users[user]) if user else None
        kw.setdefault("timeout", 30)
        resp = requests.request(method, self.stack.server.url(self.base + path), auth=auth,
                                verify=self.stack.server_ca, **kw)
        if method != "GET" and resp.status_code < 300:
            time.sleep(0.1)   # let the gateways' subscribers hear the write (promised: 1 s)
        return resp

    def upload(self, cert, app="app1", user="dev1", chain=None, **extra):
        body = {"certificate": cert.pem.decode(), "appId": app,
                "chain": cert.der_chain_pem() if chain is None else chain}
        body.update(extra)
        return self.call("POST", "/certs", user, json=body)

    def approved(self, cert, app="app1", user="dev1", manager="mgr1"):
        r = self.upload(cert, app, user)
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        r = self.call("POST", "/certs/%s/approve" % cid, manager)
        assert r.status_code == 200, r.text
        return cid


# Which customer owns which app in the admin suites (what a manager sets up
# with POST /customers and POST /apps before developers upload).
APPS = {"app1": "cust-1", "acme": "cust-1", "app3": "cust-1", "app2": "cust-2"}


def seed(r, apps=APPS, prefix="certgate:"):
    """Write customers and apps as the admin API stores them."""
    now = str(int(time.time()))
    p = r.pipeline(transaction=True)
    for cust in sorted(set(apps.values())):
        p.hset(prefix + "customer:" + cust, mapping={
            "id": cust, "name": cust, "created": now, "created_by": "seed",
            "updated": now, "updated_by": "seed", "version": "1"})
        p.sadd(prefix + "customers", cust)
    for app, cust in apps.items():
        p.hset(prefix + "appinfo:" + app, mapping={
            "id": app, "customer_id": cust, "created": now, "created_by": "seed",
            "updated": now, "updated_by": "seed", "version": "1"})
        p.sadd(prefix + "apps", app)
    p.execute()


def error_code(resp):
    try:
        return resp.json().get("code")
    except ValueError:
        return None
