#!/usr/bin/env python3
"""Self-test of spec/support/fake_aws.py over HTTP (stdlib unittest).

    python3 spec/support/fake_aws_selftest.py [-v]

Optional: if botocore is importable (e.g. run with a throwaway venv's python),
botocore's own IMDS, container and STS clients are pointed at the fake too.
"""

import datetime
import hashlib
import hmac
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
FAKE = os.path.join(HERE, "fake_aws.py")
EMULATOR = os.path.join(os.path.dirname(os.path.dirname(HERE)), "tools", "rds-emulator",
                        "rds-emulator")
NS = {"sts": "https://sts.amazonaws.com/doc/2011-06-15/"}
AKID_RE = re.compile(r"ASIA[A-Z0-9]{16}")
ISO_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
TTL = "x-aws-ec2-metadata-token-ttl-seconds"
TOKEN = "x-aws-ec2-metadata-token"


# ------------------------------------------------------------- helpers --

def start_fake(*extra, stdin=subprocess.PIPE):
    """Start fake_aws.py; returns (Popen, info dict)."""
    proc = subprocess.Popen([sys.executable, FAKE, *extra], stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError("fake_aws did not start: " + proc.stderr.read())
    return proc, json.loads(line)


def stop_fake(proc):
    if proc.poll() is None:
        proc.terminate()
        proc.wait(5)
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f:
            f.close()


def call(url, method="GET", headers=None, body=None, timeout=5):
    """HTTP request; returns (status, headers dict lower-cased, body bytes)."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        path = u.path or "/"
        if u.query:
            path += "?" + u.query
        if isinstance(body, str):
            body = body.encode()
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def ctl(info, path, data=None):
    method = "POST" if data is not None else "GET"
    status, _, body = call(info["control_url"] + path, method,
                           {"Content-Type": "application/json"},
                           json.dumps(data) if data is not None else None)
    if status != 200:
        raise AssertionError("control %s: %s %s" % (path, status, body))
    return json.loads(body)


def sigv4_headers(url, body, akid, secret, token=None, region="us-east-1",
                  service="sts", when=None):
    """Client-side SigV4 (header) signing of a form POST, written independently."""
    u = urllib.parse.urlsplit(url)
    when = when or datetime.datetime.now(datetime.timezone.utc)
    amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    headers = {"content-type": "application/x-www-form-urlencoded",
               "host": u.netloc, "x-amz-date": amz_date}
    if token:
        headers["x-amz-security-token"] = token
    names = sorted(headers)
    creq = "\n".join(["POST", "/", "",
                      "".join("%s:%s\n" % (n, headers[n]) for n in names),
                      ";".join(names), hashlib.sha256(body.encode()).hexdigest()])
    scope = "%s/%s/%s/aws4_request" % (day, region, service)
    sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                     hashlib.sha256(creq.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = ("AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, "
                                "Signature=%s" % (akid, scope, ";".join(names), sig))
    del headers["host"]   # http.client sends the same Host itself
    return headers


def form(**params):
    params.setdefault("Version", "2011-06-15")
    return urllib.parse.urlencode(params)


def parse_iso(s):
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


# -------------------------------------------------------------- tests ---

class FakeAwsTestCase(unittest.TestCase):
    """One shared fake process; every test starts from reset()."""

    @classmethod
    def setUpClass(cls):
        cls.state = tempfile.mkdtemp(prefix="fake_aws_selftest.")
        cls.proc, cls.info = start_fake("--state-dir", cls.state, "--lifetime", "3600",
                                        "--static-key", "AKIDSTATIC:staticsecret")

    @classmethod
    def tearDownClass(cls):
        stop_fake(cls.proc)
        shutil.rmtree(cls.state, ignore_errors=True)

    def setUp(self):
        ctl(self.info, "/reset", {})
        ctl(self.info, "/imds", {"invalidate_tokens": True})

    def mode(self, service, mode, **opts):
        return ctl(self.info, "/mode", dict(opts, service=service, mode=mode))

    # --- IMDS helpers -------------------------------------------------

    def imds_token(self, ttl="21600"):
        status, headers, body = call(self.info["imds_url"] + "/latest/api/token", "PUT",
                                     {TTL: ttl})
        self.assertEqual(status, 200)
        self.assertEqual(headers[TTL], ttl)
        return body.decode()

    def imds_get(self, path, token=None):
        headers = {TOKEN: token} if token else {}
        return call(self.info["imds_url"] + path, headers=headers)

    def imds_credentials(self):
        token = self.imds_token()
        status, _, role = self.imds_get("/latest/meta-data/iam/security-credentials/", token)
        self.assertEqual(status, 200)
        status, _, body = self.imds_get(
            "/latest/meta-data/iam/security-credentials/" + role.decode(), token)
        self.assertEqual(status, 200, body)
        return json.loads(body)

    def assert_credential(self, akid, secret, token, expiration, lifetime=3600):
        self.assertRegex(akid, AKID_RE)
        self.assertEqual(len(akid), 20)
        self.assertGreaterEqual(len(secret), 40)
        self.assertGreaterEqual(len(token), 300)
        self.assertRegex(expiration, ISO_RE)
        self.assertAlmostEqual(parse_iso(expiration), time.time() + lifetime, delta=3)


class StartupTest(FakeAwsTestCase):
    def test_info_and_files(self):
        info = self.info
        for key in ("imds_url", "ecs_url", "sts_url", "control_url", "web_identity_token_file",
                    "container_token", "container_token_file", "role_arn", "pid"):
            self.assertIn(key, info)
        for key in ("imds_url", "ecs_url", "sts_url", "control_url"):
            self.assertTrue(info[key].startswith("http://127.0.0.1:"), info[key])
        for path, value in ((info["web_identity_token_file"], info["web_identity_token"]),
                            (info["container_token_file"], info["container_file_token"])):
            with open(path) as f:
                self.assertEqual(f.read(), value)   # exact: no trailing newline
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(ctl(info, "/info")["imds_url"], info["imds_url"])


class ImdsTest(FakeAwsTestCase):
    def test_v2_flow(self):
        doc = self.imds_credentials()
        self.assertEqual(doc["Code"], "Success")
        self.assertEqual(doc["Type"], "AWS-HMAC")
        self.assertRegex(doc["LastUpdated"], ISO_RE)
        self.assert_credential(doc["AccessKeyId"], doc["SecretAccessKey"], doc["Token"],
                               doc["Expiration"])
        counts = ctl(self.info, "/counts")["imds"]
        self.assertEqual(counts["/latest/api/token"], 1)
        self.assertEqual(counts["total"], 3)
        log = ctl(self.info, "/requests?service=imds")
        self.assertEqual(log[0]["method"], "PUT")
        self.assertEqual(log[0]["ttl"], "21600")
        self.assertTrue(log[2]["token_valid"])
        self.assertEqual(log[2]["issued_akid"], doc["AccessKeyId"])

    def test_new_credential_per_request_unless_reuse(self):
        a, b = self.imds_credentials(), self.imds_credentials()
        self.assertNotEqual(a["AccessKeyId"], b["AccessKeyId"])
        ctl(self.info, "/reuse", {"service": "imds", "min_remaining": 60})
        a, b = self.imds_credentials(), self.imds_credentials()
        self.assertEqual(a["AccessKeyId"], b["AccessKeyId"])

    def test_extended_region_and_identity(self):
        token = self.imds_token()
        status, _, body = self.imds_get(
            "/latest/meta-data/iam/security-credentials-extended/kong-rds-role", token)
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["AccountId"], "123456789012")
        self.assertEqual(self.imds_get("/latest/meta-data/placement/region", token)[2],
                         b"us-east-1")
        self.assertEqual(self.imds_get("/latest/meta-data/placement/availability-zone",
                                       token)[2], b"us-east-1a")
        doc = json.loads(self.imds_get("/latest/dynamic/instance-identity/document", token)[2])
        self.assertEqual(doc["region"], "us-east-1")
        ctl(self.info, "/imds", {"region": "eu-west-3"})
        self.assertEqual(self.imds_get("/latest/meta-data/placement/region", token)[2],
                         b"eu-west-3")
        self.assertEqual(self.imds_get("/latest/meta-data/nope", token)[0], 404)

    def test_token_errors(self):
        url = self.info["imds_url"] + "/latest/api/token"
        self.assertEqual(call(url, "PUT")[0], 400)                   # no TTL header
        self.assertEqual(call(url, "PUT", {TTL: "0"})[0], 400)
        self.assertEqual(call(url, "PUT", {TTL: "21601"})[0], 400)
        self.assertEqual(call(url, "PUT", {TTL: "x"})[0], 400)
        self.assertEqual(call(url, "PUT", {TTL: "60", "X-Forwarded-For": "1.2.3.4"})[0], 403)
        self.assertEqual(call(url, "GET", {TTL: "60"})[0], 405)
        path = "/latest/meta-data/placement/region"
        self.assertEqual(self.imds_get(path, "bogus")[0], 401)
        short = self.imds_token("1")
        time.sleep(1.1)
        self.assertEqual(self.imds_get(path, short)[0], 401)        # expired token

    def test_invalidate_tokens(self):
        token = self.imds_token()
        path = "/latest/meta-data/placement/region"
        self.assertEqual(self.imds_get(path, token)[0], 200)
        ctl(self.info, "/imds", {"invalidate_tokens": True})
        self.assertEqual(self.imds_get(path, token)[0], 401)

    def test_token_policies(self):
        path = "/latest/meta-data/placement/region"
        self.assertEqual(self.imds_get(path)[0], 200)               # default: v1 allowed
        self.mode("imds", "imdsv2")
        self.assertEqual(self.imds_get(path)[0], 401)
        self.assertEqual(self.imds_get(path, self.imds_token())[0], 200)
        self.mode("imds", "imdsv1")
        url = self.info["imds_url"] + "/latest/api/token"
        self.assertEqual(call(url, "PUT", {TTL: "21600"})[0], 403)
        self.assertEqual(self.imds_get(path)[0], 200)
        self.mode("imds", "imdsv1", status=404)
        self.assertEqual(call(url, "PUT", {TTL: "21600"})[0], 404)
        ctl(self.info, "/reset", {})
        self.assertEqual(call(url, "PUT", {TTL: "21600"})[0], 200)

    def test_no_role(self):
        ctl(self.info, "/imds", {"role_name": None})
        token = self.imds_token()
        self.assertEqual(
            self.imds_get("/latest/meta-data/iam/security-credentials/", token)[0], 404)
        ctl(self.info, "/imds", {"role_name": "other"})
        self.assertEqual(self.imds_get(
            "/latest/meta-data/iam/security-credentials/kong-rds-role", token)[0], 404)

    def test_lifetime(self):
        ctl(self.info, "/lifetime", {"seconds": 20})
        doc = self.imds_credentials()
        self.assertAlmostEqual(parse_iso(doc["Expiration"]), time.time() + 20, delta=2)


class EcsTest(FakeAwsTestCase):
    def get(self, auth=None, path=None):
        url = self.info["ecs_url"] if path is None else \
            self.info["ecs_url"].rsplit("/", 1)[0] + path
        headers = {"Accept": "application/json"}
        if auth is not None:
            headers["Authorization"] = auth
        return call(url, headers=headers)

    def test_env_and_file_tokens(self):
        for auth, source in ((self.info["container_token"], "env"),
                             (self.info["container_file_token"], "file")):
            status, headers, body = self.get(auth)
            self.assertEqual(status, 200, body)
            self.assertEqual(headers["content-type"], "application/json")
            doc = json.loads(body)
            self.assert_credential(doc["AccessKeyId"], doc["SecretAccessKey"], doc["Token"],
                                   doc["Expiration"])
            self.assertEqual(doc["RoleArn"], self.info["role_arn"])
            self.assertEqual(ctl(self.info, "/requests?service=ecs")[-1]["auth_source"], source)
        eks = call(self.info["eks_url"], headers={"Authorization": self.info["container_token"]})
        self.assertEqual(eks[0], 200)

    def test_auth_failures(self):
        self.assertEqual(self.get()[0], 401)
        self.assertEqual(self.get("wrong")[0], 401)
        ctl(self.info, "/ecs", {"require_auth": False})
        self.assertEqual(self.get()[0], 200)
        self.assertEqual(self.get("wrong")[0], 401)
        self.assertEqual(self.get(self.info["container_token"], "/other")[0], 404)

    def test_rotate_tokens(self):
        old_file = self.info["container_file_token"]
        old_jwt = self.info["web_identity_token"]
        new = ctl(self.info, "/rotate_tokens", {})
        self.assertNotEqual(new["container_file_token"], old_file)
        with open(self.info["container_token_file"]) as f:
            self.assertEqual(f.read(), new["container_file_token"])
        with open(self.info["web_identity_token_file"]) as f:
            self.assertEqual(f.read(), new["web_identity_token"])
        self.assertNotEqual(new["web_identity_token"], old_jwt)
        self.assertEqual(self.get(old_file)[0], 401)
        self.assertEqual(self.get(new["container_file_token"])[0], 200)
        self.assertEqual(self.get(self.info["container_token"])[0], 200)
        self.__class__.info = dict(self.info, **new)


class StsTest(FakeAwsTestCase):
    ROLE = "arn:aws:iam::210987654321:role/path/kong-assumed"

    def post(self, body, headers=None):
        h = {"content-type": "application/x-www-form-urlencoded"}
        h.update(headers or {})
        status, headers, raw = call(self.info["sts_url"] + "/", "POST", h, body)
        return status, headers, ET.fromstring(raw) if raw.strip() else None

    def web_identity(self, token=None, **params):
        params.setdefault("RoleArn", self.info["role_arn"])
        params.setdefault("RoleSessionName", "kong-session")
        params["WebIdentityToken"] = token or self.web_identity_token()
        return self.post(form(Action="AssumeRoleWithWebIdentity", **params))

    def web_identity_token(self):
        with open(self.info["web_identity_token_file"]) as f:
            return f.read()

    def creds_of(self, xml, action):
        result = xml.find("sts:%sResult" % action, NS)
        c = result.find("sts:Credentials", NS)
        return {k: c.find("sts:" + k, NS).text
                for k in ("AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration")}

    def error_code(self, xml):
        self.assertEqual(xml.tag, "{%s}ErrorResponse" % NS["sts"])
        self.assertIsNotNone(xml.find("sts:RequestId", NS))
        return xml.find("sts:Error/sts:Code", NS).text

    def assume_role(self, akid, secret, token=None, role=ROLE, session="KongPostgres",
                    **sign_opts):
        body = form(Action="AssumeRole", RoleArn=role, RoleSessionName=session)
        return self.post(body, sigv4_headers(self.info["sts_url"], body, akid, secret, token,
                                             **sign_opts))

    def test_web_identity(self):
        status, headers, xml = self.web_identity()
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "text/xml")
        self.assertIn("x-amzn-requestid", headers)
        self.assertEqual(xml.tag, "{%s}AssumeRoleWithWebIdentityResponse" % NS["sts"])
        c = self.creds_of(xml, "AssumeRoleWithWebIdentity")
        self.assert_credential(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"],
                               c["Expiration"])
        arn = xml.find(".//sts:AssumedRoleUser/sts:Arn", NS).text
        self.assertEqual(arn, "arn:aws:sts::123456789012:assumed-role/kong-rds-role/kong-session")
        self.assertEqual(len(arn.split(":")), 6)
        rec = ctl(self.info, "/requests?service=sts")[-1]
        self.assertEqual(rec["action"], "AssumeRoleWithWebIdentity")
        self.assertEqual(rec["role_arn"], self.info["role_arn"])
        self.assertEqual(rec["role_session_name"], "kong-session")
        self.assertEqual(rec["host"], urllib.parse.urlsplit(self.info["sts_url"]).netloc)
        self.assertTrue(rec["web_identity_token_ok"])
        self.assertEqual(rec["issued_akid"], c["AccessKeyId"])
        self.assertEqual(ctl(self.info, "/counts")["sts"]["AssumeRoleWithWebIdentity"], 1)

    def test_web_identity_errors(self):
        status, _, xml = self.web_identity("not-the-token")
        self.assertEqual((status, self.error_code(xml)), (400, "InvalidIdentityToken"))
        status, _, xml = self.web_identity(RoleArn="not-an-arn")
        self.assertEqual((status, self.error_code(xml)), (400, "ValidationError"))
        status, _, xml = self.web_identity(RoleSessionName="bad name")
        self.assertEqual((status, self.error_code(xml)), (400, "ValidationError"))
        status, _, xml = self.post(form(Action="Nope"))
        self.assertEqual((status, self.error_code(xml)), (400, "InvalidAction"))

    def test_assume_role_with_issued_credentials(self):
        base = self.creds_of(self.web_identity()[2], "AssumeRoleWithWebIdentity")
        status, _, xml = self.assume_role(base["AccessKeyId"], base["SecretAccessKey"],
                                          base["SessionToken"], region="eu-central-1")
        self.assertEqual(status, 200, xml and ET.tostring(xml))
        c = self.creds_of(xml, "AssumeRole")
        self.assert_credential(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"],
                               c["Expiration"])
        self.assertEqual(xml.find(".//sts:AssumedRoleUser/sts:Arn", NS).text,
                         "arn:aws:sts::210987654321:assumed-role/kong-assumed/KongPostgres")
        rec = ctl(self.info, "/requests?service=sts")[-1]
        self.assertEqual(rec["caller_akid"], base["AccessKeyId"])
        self.assertEqual(rec["signing_region"], "eu-central-1")
        self.assertEqual(rec["signing_service"], "sts")
        self.assertIs(rec["signature_valid"], True)
        self.assertEqual(rec["role_arn"], self.ROLE)
        self.assertEqual(rec["role_session_name"], "KongPostgres")

    def test_assume_role_auth_failures(self):
        base = self.creds_of(self.web_identity()[2], "AssumeRoleWithWebIdentity")
        cases = [
            (dict(akid=base["AccessKeyId"], secret="wrong", token=base["SessionToken"]),
             "SignatureDoesNotMatch"),
            (dict(akid=base["AccessKeyId"], secret=base["SecretAccessKey"], token="wrong"),
             "InvalidClientTokenId"),
            (dict(akid=base["AccessKeyId"], secret=base["SecretAccessKey"],
                  token=base["SessionToken"],
                  when=datetime.datetime.now(datetime.timezone.utc)
                  - datetime.timedelta(minutes=20)),
             "SignatureDoesNotMatch"),
        ]
        for kwargs, code in cases:
            status, _, xml = self.assume_role(**kwargs)
            self.assertEqual((status, self.error_code(xml)), (403, code), kwargs)
        status, _, xml = self.post(form(Action="AssumeRole", RoleArn=self.ROLE,
                                        RoleSessionName="x1"))
        self.assertEqual((status, self.error_code(xml)), (403, "MissingAuthenticationToken"))

    def test_assume_role_with_expired_caller(self):
        self.mode("sts", "expired", count=1)
        base = self.creds_of(self.web_identity()[2], "AssumeRoleWithWebIdentity")
        status, _, xml = self.assume_role(base["AccessKeyId"], base["SecretAccessKey"],
                                          base["SessionToken"])
        self.assertEqual((status, self.error_code(xml)), (403, "ExpiredToken"))

    def test_unknown_and_static_keys(self):
        status, _, _ = self.assume_role("AKIDUNKNOWN", "whatever")
        self.assertEqual(status, 200)                                # lenient default
        self.assertIsNone(ctl(self.info, "/requests?service=sts")[-1]["signature_valid"])
        self.assertEqual(self.assume_role("AKIDSTATIC", "staticsecret")[0], 200)
        self.assertIs(ctl(self.info, "/requests?service=sts")[-1]["signature_valid"], True)
        self.assertEqual(self.assume_role("AKIDSTATIC", "nope")[0], 403)
        ctl(self.info, "/keys", {"akid": "AKIDADDED", "secret": "s3cret"})
        self.assertEqual(self.assume_role("AKIDADDED", "s3cret")[0], 200)
        ctl(self.info, "/sts", {"auth": "strict"})
        status, _, xml = self.assume_role("AKIDUNKNOWN", "whatever")
        self.assertEqual((status, self.error_code(xml)), (403, "InvalidClientTokenId"))

    def test_get_caller_identity(self):
        body = form(Action="GetCallerIdentity")
        status, _, xml = self.post(body, sigv4_headers(self.info["sts_url"], body,
                                                       "AKIDSTATIC", "staticsecret"))
        self.assertEqual(status, 200)
        self.assertEqual(xml.find(".//sts:Account", NS).text, "123456789012")


class FaultModeTest(FakeAwsTestCase):
    """Every mode on every service."""

    def credential_request(self, service):
        """(url, method, headers, body) of each service's credential request."""
        if service == "imds":
            return (self.info["imds_url"] + "/latest/meta-data/iam/security-credentials/"
                    "kong-rds-role", "GET", {}, None)
        if service == "ecs":
            return (self.info["ecs_url"], "GET",
                    {"Authorization": self.info["container_token"]}, None)
        with open(self.info["web_identity_token_file"]) as f:
            token = f.read()
        body = form(Action="AssumeRoleWithWebIdentity", RoleArn=self.info["role_arn"],
                    RoleSessionName="s1", WebIdentityToken=token)
        return (self.info["sts_url"] + "/", "POST",
                {"Content-Type": "application/x-www-form-urlencoded"}, body)

    def request(self, service, timeout=5):
        url, method, headers, body = self.credential_request(service)
        return call(url, method, headers, body, timeout)

    def expiration(self, service, body):
        if service == "sts":
            return ET.fromstring(body).find(".//sts:Expiration", NS).text
        return json.loads(body)["Expiration"]

    def test_status_modes(self):
        for service in ("imds", "ecs", "sts"):
            for status in (500, 503):
                self.mode(service, str(status))
                self.assertEqual(self.request(service)[0], status, service)
            self.mode(service, "ok")
            self.assertEqual(self.request(service)[0], 200, service)
        self.mode("sts", "500")
        status, _, body = self.request("sts")
        self.assertEqual(ET.fromstring(body).find("sts:Error/sts:Code", NS).text,
                         "InternalFailure")

    def test_timeout(self):
        for service in ("imds", "ecs", "sts"):
            self.mode(service, "timeout", seconds=0.6)
            start = time.time()
            self.assertEqual(self.request(service)[0], 200)
            self.assertGreaterEqual(time.time() - start, 0.55)
            with self.assertRaises(OSError):          # socket.timeout
                self.request(service, timeout=0.2)

    def test_garbage(self):
        for service in ("imds", "ecs", "sts"):
            self.mode(service, "garbage")
            status, _, body = self.request(service)
            self.assertEqual(status, 200)
            parse = ET.fromstring if service == "sts" else json.loads
            with self.assertRaises(Exception):
                parse(body)
        status, headers, _ = call(self.info["imds_url"] + "/latest/api/token", "PUT",
                                  {TTL: "21600"})
        self.assertEqual(status, 200)
        self.assertNotIn(TTL, headers)

    def test_expired(self):
        for service in ("imds", "ecs", "sts"):
            self.mode(service, "expired", seconds=120)
            status, _, body = self.request(service)
            self.assertEqual(status, 200)
            self.assertAlmostEqual(parse_iso(self.expiration(service, body)),
                                   time.time() - 120, delta=3)

    def test_refuse(self):
        for service in ("imds", "ecs", "sts"):
            self.mode(service, "refuse")
            with self.assertRaises((ConnectionError, http.client.HTTPException)):
                self.request(service)
            self.assertEqual(ctl(self.info, "/requests?service=" + service)[-1]["mode"],
                             "refuse")

    def test_count_path_and_action_filters(self):
        self.mode("imds", "500", count=2, path="/latest/meta-data/iam")
        self.assertEqual(self.imds_get("/latest/meta-data/placement/region")[0], 200)
        self.assertEqual(self.request("imds")[0], 500)
        self.assertEqual(self.request("imds")[0], 500)
        self.assertEqual(self.request("imds")[0], 200)
        self.mode("sts", "503", action="AssumeRole")
        self.assertEqual(self.request("sts")[0], 200)   # AssumeRoleWithWebIdentity
        self.mode("all", "500")
        for service in ("imds", "ecs", "sts"):
            self.assertEqual(self.request(service)[0], 500)

    def test_counts_requests_reset(self):
        self.request("imds")
        self.request("ecs")
        self.request("sts")
        counts = ctl(self.info, "/counts")
        self.assertEqual([counts[s]["total"] for s in ("imds", "ecs", "sts")], [1, 1, 1])
        self.assertEqual(counts["sts"]["/"], 1)
        self.assertEqual(len(ctl(self.info, "/requests")), 3)
        self.mode("ecs", "500")
        ctl(self.info, "/reset", {"counts_only": True})
        self.assertEqual(ctl(self.info, "/counts")["ecs"], {"total": 0})
        self.assertEqual(self.request("ecs")[0], 500)       # fault kept
        ctl(self.info, "/reset", {})
        self.assertEqual(self.request("ecs")[0], 200)

    def test_bad_control_requests(self):
        for data in ({"service": "imds", "mode": "bogus"}, {"service": "nope", "mode": "ok"},
                     {"service": "sts", "mode": "imdsv1"}):
            status, _, _ = call(self.info["control_url"] + "/mode", "POST", {},
                                json.dumps(data))
            self.assertEqual(status, 400, data)
        self.assertEqual(call(self.info["control_url"] + "/nope")[0], 404)


class RegistrationTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="fake_aws_reg.")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_register_cmd_and_jsonl(self):
        out = os.path.join(self.dir, "calls")
        script = os.path.join(self.dir, "register.sh")
        with open(script, "w") as f:
            f.write('#!/bin/sh\nprintf "%%s\\n" "$@" >> %s\n' % out)
        os.chmod(script, 0o755)
        proc, info = start_fake("--state-dir", self.dir, "--register-cmd", script + " add-key X")
        self.addCleanup(stop_fake, proc)
        ecs = call(info["ecs_url"], headers={"Authorization": info["container_token"]})
        doc = json.loads(ecs[2])
        with open(out) as f:
            args = f.read().split("\n")
        self.assertEqual(args[:6], ["add-key", "X", doc["AccessKeyId"], doc["SecretAccessKey"],
                                    doc["Token"], "--expires"])
        self.assertAlmostEqual(int(args[6]), parse_iso(doc["Expiration"]), delta=1)
        with open(info["credentials_log"]) as f:
            rec = json.loads(f.readline())
        self.assertEqual(rec["access_key_id"], doc["AccessKeyId"])
        self.assertEqual(rec["session_token"], doc["Token"])
        self.assertIs(rec["registered"], True)
        self.assertEqual(ctl(info, "/credentials")[0]["service"], "ecs")

    def test_failing_register_cmd_is_recorded(self):
        proc, info = start_fake("--state-dir", self.dir, "--register-cmd", "false")
        self.addCleanup(stop_fake, proc)
        status, _, _ = call(info["ecs_url"], headers={"Authorization": info["container_token"]})
        self.assertEqual(status, 200)
        rec = ctl(info, "/credentials")[0]
        self.assertIs(rec["registered"], False)
        self.assertIn("exit 1", rec["register_error"])

    @unittest.skipUnless(os.access(EMULATOR, os.X_OK) and os.geteuid() == 0,
                         "needs root and tools/rds-emulator/rds-emulator")
    def test_real_rds_emulator_add_key(self):
        """Uses the real add-key on a minimal directory (no PostgreSQL needed)."""
        emu = os.path.join(self.dir, "emu")
        os.mkdir(emu)
        open(os.path.join(emu, ".rds-emulator"), "w").close()
        proc, info = start_fake("--state-dir", self.dir, "--emulator-dir", emu)
        self.addCleanup(stop_fake, proc)
        doc = json.loads(call(info["imds_url"] + "/latest/meta-data/iam/security-credentials/"
                              "kong-rds-role")[2])
        with open(os.path.join(emu, "keys.json")) as f:
            keys = json.load(f)
        entry = keys[doc["AccessKeyId"]]
        self.assertEqual(entry["secret"], doc["SecretAccessKey"])
        self.assertEqual(entry["session_token"], doc["Token"])
        self.assertAlmostEqual(entry["expires"], parse_iso(doc["Expiration"]), delta=1)
        # the STS verifier finds keys registered with the emulator
        body = form(Action="GetCallerIdentity")
        with open(os.path.join(emu, "keys.json"), "w") as f:
            json.dump(dict(keys, AKIDEMU={"secret": "emusecret"}), f)
        status, _, _ = call(info["sts_url"] + "/", "POST",
                            sigv4_headers(info["sts_url"], body, "AKIDEMU", "emusecret"), body)
        self.assertEqual(status, 200)
        self.assertIs(ctl(info, "/requests?service=sts")[-1]["signature_valid"], True)


class LifecycleTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="fake_aws_life.")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def wait_exit(self, proc, seconds=3):
        proc.wait(seconds)
        stop_fake(proc)

    def test_sigterm(self):
        proc, _ = start_fake("--state-dir", self.dir)
        proc.send_signal(signal.SIGTERM)
        self.wait_exit(proc)

    def test_stdin_eof(self):
        proc, _ = start_fake("--state-dir", self.dir)
        proc.stdin.close()
        self.wait_exit(proc)

    def test_shutdown_endpoint(self):
        proc, info = start_fake("--state-dir", self.dir)
        ctl(info, "/shutdown", {})
        self.wait_exit(proc)

    def test_parent_death(self):
        parent = subprocess.Popen(["sleep", "30"])
        proc, _ = start_fake("--state-dir", self.dir, "--parent-pid", str(parent.pid),
                             stdin=subprocess.DEVNULL)
        time.sleep(0.7)
        self.assertIsNone(proc.poll())
        parent.kill()
        parent.wait()
        self.wait_exit(proc)

    def test_ready_file(self):
        ready = os.path.join(self.dir, "ready.json")
        proc, info = start_fake("--state-dir", self.dir, "--ready-file", ready)
        self.addCleanup(stop_fake, proc)
        with open(ready) as f:
            self.assertEqual(json.load(f), info)


# ------------------------------------------------- optional: botocore ---

try:
    import botocore.session
    from botocore.utils import ContainerMetadataFetcher, InstanceMetadataFetcher
    HAVE_BOTOCORE = True
except ImportError:
    HAVE_BOTOCORE = False


@unittest.skipUnless(HAVE_BOTOCORE, "botocore not importable")
class BotocoreWireTest(FakeAwsTestCase):
    """botocore's own clients against the fake (wire-format cross-check)."""

    def test_imds_fetcher(self):
        fetcher = InstanceMetadataFetcher(timeout=2, num_attempts=1,
                                          base_url=self.info["imds_url"] + "/")
        creds = fetcher.retrieve_iam_role_credentials()
        self.assertRegex(creds["access_key"], AKID_RE)
        self.assertEqual(creds["role_name"], "kong-rds-role")
        self.assertEqual(ctl(self.info, "/counts")["imds"]["/latest/api/token"], 1)

    def test_container_fetcher(self):
        fetcher = ContainerMetadataFetcher()
        creds = fetcher.retrieve_full_uri(
            self.info["ecs_url"], headers={"Authorization": self.info["container_token"]})
        self.assertRegex(creds["AccessKeyId"], AKID_RE)

    def sts_client(self, **creds):
        session = botocore.session.get_session()
        return session.create_client("sts", region_name="eu-west-1",
                                     endpoint_url=self.info["sts_url"], **creds)

    def test_sts_web_identity_and_assume_role(self):
        from botocore import UNSIGNED
        from botocore.config import Config
        session = botocore.session.get_session()
        anon = session.create_client("sts", region_name="eu-west-1",
                                     endpoint_url=self.info["sts_url"],
                                     config=Config(signature_version=UNSIGNED))
        with open(self.info["web_identity_token_file"]) as f:
            token = f.read()
        out = anon.assume_role_with_web_identity(RoleArn=self.info["role_arn"],
                                                 RoleSessionName="boto",
                                                 WebIdentityToken=token)
        c = out["Credentials"]
        self.assertRegex(c["AccessKeyId"], AKID_RE)
        signed = self.sts_client(aws_access_key_id=c["AccessKeyId"],
                                 aws_secret_access_key=c["SecretAccessKey"],
                                 aws_session_token=c["SessionToken"])
        out = signed.assume_role(RoleArn=StsTest.ROLE, RoleSessionName="KongPostgres")
        self.assertRegex(out["Credentials"]["AccessKeyId"], AKID_RE)
        rec = ctl(self.info, "/requests?service=sts")[-1]
        self.assertIs(rec["signature_valid"], True)
        self.assertEqual(rec["signing_region"], "eu-west-1")
        with self.assertRaises(Exception) as err:
            self.sts_client(aws_access_key_id=c["AccessKeyId"], aws_secret_access_key="bad",
                            aws_session_token=c["SessionToken"]).assume_role(
                RoleArn=StsTest.ROLE, RoleSessionName="KongPostgres")
        self.assertIn("SignatureDoesNotMatch", str(err.exception))


if __name__ == "__main__":
    unittest.main()
