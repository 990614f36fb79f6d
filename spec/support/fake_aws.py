#!/usr/bin/env python3
"""Fake AWS credential endpoints for kong_rds_iam tests (Python 3 stdlib only).

One process serves, each on its own ephemeral 127.0.0.1 port:

* EC2 IMDS        (IMDSv2 token + iam/security-credentials, placement/region, ...)
* ECS/EKS         container credentials (AWS_CONTAINER_CREDENTIALS_FULL_URI)
* STS             query protocol: AssumeRoleWithWebIdentity, AssumeRole,
                  GetCallerIdentity (SigV4 parsed and, when the secret is known,
                  verified)
* control         JSON API to inject faults and read request counts / logs

Wire formats follow what aws-config 1.13 / aws-sdk-sts send and parse (see
spec/support/README.md for the details that matter).

Usage:
    python3 spec/support/fake_aws.py [--emulator-dir DIR] [--state-dir DIR]
        [--lifetime 3600] [--region us-east-1] [--ready-file PATH] ...

Prints one JSON line with URLs, ports and token files, then serves until
SIGTERM/SIGINT, POST /shutdown on the control port, EOF on stdin (when stdin is
a pipe or socket) or death of the parent process (--parent-pid, default: the
process that started us).
"""

import argparse
import base64
import calendar
import hashlib
import hmac
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import string
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

LOCALHOST = "127.0.0.1"
ACCOUNT_ID = "123456789012"
STS_NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/"
SERVICES = ("imds", "ecs", "sts")
SIMPLE_MODES = ("ok", "timeout", "garbage", "expired", "refuse")
IMDS_TOKEN_POLICIES = {"imdsv1": "disabled", "imdsv2": "required",
                       "v2only": "required", "v1v2": "optional"}
IMDS_MAX_TOKEN_TTL = 21600
ECS_PATHS = ("/creds", "/v1/credentials")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EMULATOR_SCRIPT = os.path.join(REPO_ROOT, "tools", "rds-emulator", "rds-emulator")


# --------------------------------------------------------------- helpers --

def iso8601(ts):
    """Format a unix time as AWS does in credentials: YYYY-MM-DDTHH:MM:SSZ."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def random_chars(alphabet, n):
    return "".join(secrets.choice(alphabet) for _ in range(n))


def random_access_key_id():
    """Temporary key id: ASIA + 16 uppercase alphanumerics."""
    return "ASIA" + random_chars(string.ascii_uppercase + string.digits, 16)


def random_secret():
    return random_chars(string.ascii_letters + string.digits + "+/", 40)


def random_session_token():
    """Session token shaped like STS's: base64, 600-1000 chars, with + / =."""
    raw = b"\x21\x0a\x09origin_ec" + secrets.token_bytes(450 + secrets.randbelow(250))
    return base64.b64encode(raw).decode()


def json_bytes(obj, indent=None):
    return json.dumps(obj, indent=indent).encode()


# ---------------------------------------------------------- credentials --

class Credential:
    """One issued temporary credential."""

    def __init__(self, service, role_arn, lifetime):
        self.service = service
        self.role_arn = role_arn
        self.access_key_id = random_access_key_id()
        self.secret_access_key = random_secret()
        self.session_token = random_session_token()
        self.issued_at = time.time()
        self.expiration = int(self.issued_at + lifetime)
        self.registered = None
        self.register_error = None

    @property
    def expiration_iso(self):
        return iso8601(self.expiration)

    def record(self):
        """JSON-serialisable view (secrets included: this is a test fake)."""
        return {
            "service": self.service,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "session_token": self.session_token,
            "expiration": self.expiration,
            "expiration_iso": self.expiration_iso,
            "issued_at": self.issued_at,
            "role_arn": self.role_arn,
            "registered": self.registered,
            "register_error": self.register_error,
        }


class Registrar:
    """Registers issued keys with the RDS emulator through a command.

    The command is `PREFIX AKID SECRET SESSION_TOKEN --expires UNIX_TS`; the
    default prefix is `tools/rds-emulator/rds-emulator add-key EMULATOR_DIR`.
    """

    def __init__(self, prefix):
        self.prefix = prefix

    def register(self, cred):
        if not self.prefix:
            return
        argv = self.prefix + [cred.access_key_id, cred.secret_access_key,
                              cred.session_token, "--expires", str(cred.expiration)]
        env = dict(os.environ, RDS_EMU_QUIET="1")
        try:
            res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                 text=True, timeout=60, env=env)
        except (OSError, subprocess.TimeoutExpired) as err:
            cred.registered, cred.register_error = False, str(err)
        else:
            cred.registered = res.returncode == 0
            if res.returncode != 0:
                cred.register_error = "exit %d: %s" % (res.returncode, res.stderr.strip())
        if cred.register_error:
            print("fake_aws: registering %s failed: %s"
                  % (cred.access_key_id, cred.register_error), file=sys.stderr, flush=True)


class CredentialIssuer:
    """Issues credentials, appends them to a JSON-lines file and registers them."""

    def __init__(self, jsonl_path, registrar):
        self.jsonl_path = jsonl_path
        self.registrar = registrar
        self._lock = threading.Lock()
        self._by_akid = {}

    def issue(self, service, role_arn, lifetime):
        cred = Credential(service, role_arn, lifetime)
        self.registrar.register(cred)
        with self._lock:
            self._by_akid[cred.access_key_id] = cred
            with open(self.jsonl_path, "a") as f:
                f.write(json.dumps(cred.record()) + "\n")
        return cred

    def lookup(self, akid):
        with self._lock:
            return self._by_akid.get(akid)

    def records(self):
        with self._lock:
            return [c.record() for c in self._by_akid.values()]


# ----------------------------------------------------------- fault plan --

class Fault:
    """A failure mode for one service.

    mode: ok | timeout | garbage | expired | refuse | a 3-digit HTTP status.
    seconds: timeout delay, or how long ago `expired` credentials expired.
    path / action: only requests whose path starts with `path` (or STS
    requests with this Action) are affected.  count: affect only the next
    `count` matching requests, then go back to ok.
    """

    def __init__(self, mode="ok", seconds=None, path=None, action=None, count=None):
        if mode not in SIMPLE_MODES and not re.fullmatch(r"[1-5]\d\d", str(mode)):
            raise ValueError("unknown mode %r" % (mode,))
        self.mode = str(mode)
        default_seconds = 10 if mode == "timeout" else 60
        self.seconds = float(seconds) if seconds is not None else default_seconds
        self.path = path
        self.action = action
        self.count = int(count) if count is not None else None

    def matches(self, path, action):
        if self.mode == "ok" or self.count == 0:
            return False
        if self.path is not None and not path.startswith(self.path):
            return False
        return self.action is None or self.action == action

    def describe(self):
        return {"mode": self.mode, "seconds": self.seconds, "path": self.path,
                "action": self.action, "count": self.count}


OK = Fault()


class RequestLog:
    """Thread-safe request log and counters."""

    def __init__(self):
        self._lock = threading.Lock()
        self._seq = 0
        self._entries = []
        self._counts = {}

    def record(self, service, req):
        entry = {
            "service": service, "time": time.time(), "method": req.method,
            "path": req.path, "query": req.query, "host": req.header("host"),
            "user_agent": req.header("user-agent"), "headers": req.header_dict(),
            "status": None, "mode": "ok",
        }
        with self._lock:
            self._seq += 1
            entry["seq"] = self._seq
            self._entries.append(entry)
            counts = self._counts.setdefault(service, {"total": 0})
            counts["total"] += 1
            counts[req.path] = counts.get(req.path, 0) + 1
        return entry

    def count_action(self, service, action):
        with self._lock:
            counts = self._counts.setdefault(service, {"total": 0})
            counts[action] = counts.get(action, 0) + 1

    def counts(self):
        with self._lock:
            result = {s: {"total": 0} for s in SERVICES}
            result.update(json.loads(json.dumps(self._counts)))
            return result

    def entries(self, service=None):
        with self._lock:
            return [dict(e) for e in self._entries
                    if service is None or e["service"] == service]

    def reset(self):
        with self._lock:
            self._entries = []
            self._counts = {}


# ------------------------------------------------------------ the world --

class World:
    """Shared state of the fake: settings, faults, tokens, issued credentials."""

    def __init__(self, args, issuer):
        self.args = args
        self.issuer = issuer
        self.log = RequestLog()
        self.lock = threading.RLock()
        self.region = args.region
        self.role_name = args.role_name
        self.role_arn = "arn:aws:iam::%s:role/%s" % (ACCOUNT_ID, args.role_name)
        self.static_keys = dict(k.split(":", 1) for k in args.static_key)
        self.sts_auth = args.sts_auth
        self.ecs_require_auth = True
        self.state_dir = args.state_dir
        self.web_identity_token_file = os.path.join(self.state_dir, "web_identity_token")
        self.container_token_file = os.path.join(self.state_dir, "container_token")
        self.container_token = "env-" + secrets.token_urlsafe(24)
        self.imds_tokens = {}   # survives reset(): aws-config caches its token ~6 h
        self.rotate_tokens()
        self.reset_settings()

    def reset_settings(self):
        """Back to start-up settings: no faults, optional IMDSv2, fresh creds."""
        with self.lock:
            self.faults = {s: OK for s in SERVICES}
            self.lifetimes = {s: self.args.lifetime for s in SERVICES}
            self.reuse = {s: None for s in SERVICES}
            self.current = {}
            self.imds_token_policy = "optional"
            self.imds_token_forbidden_status = 403
            self.region = self.args.region
            self.role_name = self.args.role_name
            self.ecs_require_auth = True
            self.sts_auth = self.args.sts_auth

    # --- tokens -------------------------------------------------------

    def rotate_tokens(self):
        """Write new web identity / container-file tokens (old ones stop working).

        Files are written without a trailing newline: aws-config sends the
        container token file's bytes verbatim as a header value and rejects
        a trailing newline.
        """
        with self.lock:
            self.web_identity_token = make_jwt(self.role_name)
            self.container_file_token = "file-" + secrets.token_urlsafe(32)
            write_private(self.web_identity_token_file, self.web_identity_token)
            write_private(self.container_token_file, self.container_file_token)

    # --- faults -------------------------------------------------------

    def set_fault(self, service, fault):
        with self.lock:
            for s in self._services(service):
                self.faults[s] = fault

    def take_fault(self, service, path, action):
        """The fault to apply to this request (consumes one `count`)."""
        with self.lock:
            fault = self.faults[service]
            if not fault.matches(path, action):
                return OK
            if fault.count is not None:
                fault.count -= 1
            return fault

    def _services(self, service):
        if service in (None, "all", "*"):
            return SERVICES
        if service not in SERVICES:
            raise ValueError("unknown service %r" % (service,))
        return (service,)

    # --- credentials --------------------------------------------------

    def set_lifetime(self, seconds, service=None):
        with self.lock:
            for s in self._services(service):
                self.lifetimes[s] = float(seconds)

    def set_reuse(self, service, min_remaining):
        with self.lock:
            for s in self._services(service):
                self.reuse[s] = None if min_remaining is None else float(min_remaining)
                self.current.pop(s, None)

    def credential(self, service, role_arn, fault):
        """A credential for a request: new, reused, or already expired."""
        if fault.mode == "expired":
            return self.issuer.issue(service, role_arn, -fault.seconds)
        with self.lock:
            lifetime = self.lifetimes[service]
            reuse = self.reuse[service]
            cur = self.current.get(service)
            if (reuse is not None and cur is not None and cur.role_arn == role_arn
                    and cur.expiration - time.time() > reuse):
                return cur
        cred = self.issuer.issue(service, role_arn, lifetime)
        with self.lock:
            self.current[service] = cred
        return cred

    def secret_for(self, akid):
        """(secret, session_token_or_None, Credential_or_None) for a key id."""
        cred = self.issuer.lookup(akid)
        if cred:
            return cred.secret_access_key, cred.session_token, cred
        if akid in self.static_keys:
            return self.static_keys[akid], None, None
        entry = read_emulator_keys(self.args.emulator_dir).get(akid)
        if entry and entry.get("secret"):
            return entry["secret"], entry.get("session_token"), None
        return None, None, None


def make_jwt(role_name):
    """An unsigned-looking JWT like the EKS service account token."""
    def b64(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    now = int(time.time())
    header = {"alg": "RS256", "kid": secrets.token_hex(20)}
    claims = {"aud": ["sts.amazonaws.com"], "exp": now + 86400, "iat": now,
              "iss": "https://oidc.eks.us-east-1.amazonaws.com/id/FAKE",
              "sub": "system:serviceaccount:kong:%s" % role_name,
              "jti": str(uuid.uuid4())}
    sig = base64.urlsafe_b64encode(secrets.token_bytes(256)).rstrip(b"=").decode()
    return "%s.%s.%s" % (b64(header), b64(claims), sig)


def write_private(path, text):
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_emulator_keys(emulator_dir):
    if not emulator_dir:
        return {}
    try:
        with open(os.path.join(emulator_dir, "keys.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------- HTTP core --

class Request:
    """A parsed HTTP request handed to services."""

    def __init__(self, handler, body):
        split = urllib.parse.urlsplit(handler.path)
        self.method = handler.command
        self.path = split.path
        self.query = split.query
        self.raw_path = handler.path
        self.headers = handler.headers
        self.body = body
        self.params = {}

    def header(self, name):
        return self.headers.get(name)

    def header_dict(self):
        out = {}
        for k, v in self.headers.items():
            k = k.lower()
            out[k] = out[k] + ", " + v if k in out else v
        return out


class Reply:
    """Response; `after` (optional) is called once it has been sent."""

    def __init__(self, status, body=b"", content_type="text/plain", headers=None):
        self.after = None
        self.status = status
        self.body = body if isinstance(body, bytes) else body.encode()
        self.headers = {"Content-Type": content_type}
        self.headers.update(headers or {})


ERROR_CODES = {400: "Throttling", 403: "AccessDenied", 404: "NotFound",
               503: "ServiceUnavailable"}
REFUSE = object()   # handle() returns this to drop the connection


class FakeServer(ThreadingHTTPServer):
    """A threaded HTTP server on 127.0.0.1:0 bound to one service object."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, service):
        self.service = service
        self.aborted = set()
        super().__init__((LOCALHOST, 0), Handler)

    @property
    def port(self):
        return self.server_address[1]

    def shutdown_request(self, request):
        """Refused connections are reset (RST), not shut down gracefully."""
        if request in self.aborted:
            self.aborted.discard(request)
            request.close()
        else:
            super().shutdown_request(request)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def version_string(self):
        return "FakeAWS/1.0"

    def do_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        try:
            reply = self.server.service.handle(Request(self, body))
        except Exception as err:  # keep serving; report as 500
            print("fake_aws: handler error: %r" % (err,), file=sys.stderr, flush=True)
            reply = Reply(500, "internal error in fake: %r\n" % (err,))
        if reply is REFUSE:
            self.refuse()
            return
        try:
            self.send_response(reply.status)
            for k, v in reply.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True  # client went away (e.g. timed out)
        if reply.after:
            reply.after()

    do_GET = do_PUT = do_POST = do_DELETE = do_any

    def refuse(self):
        """Drop the connection without an answer: RST via SO_LINGER 0."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.server.aborted.add(self.connection)

    def log_message(self, fmt, *args):
        if self.server.service.world.args.verbose:
            sys.stderr.write("fake_aws %s: %s\n" % (self.server.service.name, fmt % args))


# -------------------------------------------------------------- services --

class Service:
    """Base for a faulty AWS endpoint: logging, counting, fault injection."""

    name = ""

    def __init__(self, world):
        self.world = world

    def handle(self, req):
        entry = self.world.log.record(self.name, req)
        self.inspect(req, entry)
        fault = self.world.take_fault(self.name, req.path, entry.get("action"))
        entry["mode"] = fault.mode
        if fault.mode == "refuse":
            return REFUSE
        if fault.mode == "timeout":
            time.sleep(fault.seconds)
        if fault.mode.isdigit():
            status = int(fault.mode)
            reply = self.error_reply(status, ERROR_CODES.get(status, "InternalFailure"),
                                     "injected failure (mode %s)" % fault.mode)
        elif fault.mode == "garbage":
            reply = Reply(200, self.garbage(req), self.content_type)
        else:
            reply = self.serve(req, entry, fault)
        entry["status"] = reply.status
        return reply

    # overridden by services
    content_type = "text/plain"

    def inspect(self, req, entry):
        """Parse the request and add service details to the log entry."""

    def serve(self, req, entry, fault):
        raise NotImplementedError

    def garbage(self, req):
        return b'{"Code" : "Success", "AccessKeyId" : "ASIA'

    def error_reply(self, status, code, message):
        return Reply(status, json_bytes({"code": code, "message": message}),
                     "application/json")


class ImdsService(Service):
    """EC2 instance metadata service (IMDSv1 + IMDSv2).

    aws-config 1.13 only speaks IMDSv2: PUT /latest/api/token with
    x-aws-ec2-metadata-token-ttl-seconds: 21600, then GETs carrying
    x-aws-ec2-metadata-token.  It never falls back to IMDSv1.
    """

    name = "imds"
    TOKEN_PATH = "/latest/api/token"
    CREDS_PREFIX = "/latest/meta-data/iam/security-credentials"

    def inspect(self, req, entry):
        token = req.header("x-aws-ec2-metadata-token")
        entry["token_present"] = token is not None
        if token is not None:
            entry["token_valid"] = self._token_valid(token)

    def serve(self, req, entry, fault):
        world = self.world
        if req.path == self.TOKEN_PATH:
            return self.issue_token(req, entry)
        if req.method != "GET":
            return self.error_reply(405, "MethodNotAllowed", "")
        with world.lock:
            policy = world.imds_token_policy
        token = req.header("x-aws-ec2-metadata-token")
        if policy != "disabled":
            if token is not None and not entry["token_valid"]:
                return Reply(401, "")
            if token is None and policy == "required":
                return Reply(401, "")
        return self.route(req, entry, fault)

    def issue_token(self, req, entry):
        world = self.world
        if req.method != "PUT":
            return Reply(405, "")
        with world.lock:
            if world.imds_token_policy == "disabled":
                return Reply(world.imds_token_forbidden_status, "")
        if req.header("x-forwarded-for") is not None:
            return Reply(403, "")
        ttl = req.header("x-aws-ec2-metadata-token-ttl-seconds")
        entry["ttl"] = ttl
        if ttl is None or not ttl.isdigit() or not 1 <= int(ttl) <= IMDS_MAX_TOKEN_TTL:
            return Reply(400, "")
        token = "AQAEA" + base64.urlsafe_b64encode(secrets.token_bytes(39)).decode()
        with world.lock:
            world.imds_tokens[token] = time.time() + int(ttl)
        return Reply(200, token, headers={"x-aws-ec2-metadata-token-ttl-seconds": ttl})

    def _token_valid(self, token):
        with self.world.lock:
            expiry = self.world.imds_tokens.get(token)
        return expiry is not None and expiry > time.time()

    def route(self, req, entry, fault):
        world = self.world
        path = req.path
        with world.lock:
            role, region = world.role_name, world.region
        for prefix, extended in ((self.CREDS_PREFIX + "-extended", True),
                                 (self.CREDS_PREFIX, False)):
            if path.startswith(prefix):
                rest = path[len(prefix):].strip("/")
                if not role:
                    return Reply(404, "")
                if rest == "":
                    return Reply(200, role)
                if rest != role:
                    return Reply(404, "")
                return self.credentials(entry, fault, extended)
        if path == "/latest/meta-data/placement/region":
            return Reply(200, region)
        if path == "/latest/meta-data/placement/availability-zone":
            return Reply(200, region + "a")
        if path == "/latest/meta-data/iam/info":
            return self.iam_info(role)
        if path == "/latest/dynamic/instance-identity/document":
            return Reply(200, json_bytes(identity_document(region), indent=2), "text/plain")
        return Reply(404, "")

    def credentials(self, entry, fault, extended):
        cred = self.world.credential(self.name, self.world.role_arn, fault)
        entry["issued_akid"] = cred.access_key_id
        doc = {
            "Code": "Success",
            "LastUpdated": iso8601(cred.issued_at),
            "Type": "AWS-HMAC",
            "AccessKeyId": cred.access_key_id,
            "SecretAccessKey": cred.secret_access_key,
            "Token": cred.session_token,
            "Expiration": cred.expiration_iso,
        }
        if extended:
            doc["AccountId"] = ACCOUNT_ID
        return Reply(200, json_bytes(doc, indent=2))

    def iam_info(self, role):
        if not role:
            return Reply(404, "")
        return Reply(200, json_bytes({
            "Code": "Success", "LastUpdated": iso8601(time.time()),
            "InstanceProfileArn": "arn:aws:iam::%s:instance-profile/%s" % (ACCOUNT_ID, role),
            "InstanceProfileId": "AIPAFAKEFAKEFAKEFAKE1"}, indent=2))

    def garbage(self, req):
        if req.path == self.TOKEN_PATH:
            return b"\x00not a token"     # no TTL header either
        return super().garbage(req)

    def error_reply(self, status, code, message):
        return Reply(status, "")


def identity_document(region):
    return {
        "accountId": ACCOUNT_ID, "architecture": "x86_64",
        "availabilityZone": region + "a", "imageId": "ami-0123456789abcdef0",
        "instanceId": "i-0123456789abcdef0", "instanceType": "m5.large",
        "pendingTime": "2024-01-01T00:00:00Z", "privateIp": "10.0.0.10",
        "region": region, "version": "2017-09-30",
    }


class EcsService(Service):
    """ECS task role / EKS Pod Identity container credentials endpoint.

    aws-config sends GET <path> with Accept: application/json and, when
    configured, Authorization: <token> (contents of
    AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE, re-read on every fetch, else
    AWS_CONTAINER_AUTHORIZATION_TOKEN).
    """

    name = "ecs"
    content_type = "application/json"

    def inspect(self, req, entry):
        auth = req.header("authorization")
        with self.world.lock:
            entry["auth_source"] = (
                "env" if auth == self.world.container_token else
                "file" if auth == self.world.container_file_token else
                None if auth is None else "invalid")

    def serve(self, req, entry, fault):
        if req.method != "GET":
            return self.error_reply(405, "MethodNotAllowed", "use GET")
        if req.path not in ECS_PATHS:
            return self.error_reply(404, "NotFound", "no such path")
        with self.world.lock:
            require_auth = self.world.ecs_require_auth
        source = entry["auth_source"]
        if source == "invalid" or (source is None and require_auth):
            return self.error_reply(401, "AccessDenied", "invalid authorization token")
        cred = self.world.credential(self.name, self.world.role_arn, fault)
        entry["issued_akid"] = cred.access_key_id
        return Reply(200, json_bytes({
            "RoleArn": cred.role_arn,
            "AccessKeyId": cred.access_key_id,
            "SecretAccessKey": cred.secret_access_key,
            "Token": cred.session_token,
            "Expiration": cred.expiration_iso,
        }), self.content_type)


class SigV4Error(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


AUTH_RE = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<cred>[^,\s]+),\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<sig>[0-9a-f]+)")


def parse_sigv4_authorization(value):
    """Parse an `Authorization: AWS4-HMAC-SHA256 ...` header, or None."""
    m = AUTH_RE.match(value or "")
    if not m:
        return None
    parts = m.group("cred").split("/")
    if len(parts) != 5:
        return None
    return {"akid": parts[0], "date": parts[1], "region": parts[2], "service": parts[3],
            "scope": "/".join(parts[1:]), "signed_headers": m.group("signed").split(";"),
            "signature": m.group("sig")}


def sigv4_quote(s):
    return urllib.parse.quote(s, safe="-_.~")


def canonical_request(req, signed_headers):
    """SigV4 canonical request for a received request (non-S3 rules)."""
    segments = req.path.split("/")
    canonical_uri = "/".join(sigv4_quote(s) for s in segments) or "/"
    pairs = urllib.parse.parse_qsl(req.query, keep_blank_values=True)
    canonical_query = "&".join(sorted("%s=%s" % (sigv4_quote(k), sigv4_quote(v))
                                      for k, v in pairs))
    lines = []
    for name in signed_headers:
        values = req.headers.get_all(name) or []
        lines.append("%s:%s" % (name, ",".join(" ".join(v.split()) for v in values)))
    payload_hash = req.header("x-amz-content-sha256") or hashlib.sha256(req.body).hexdigest()
    return "\n".join([req.method, canonical_uri, canonical_query, "\n".join(lines) + "\n",
                      ";".join(signed_headers), payload_hash])


def sigv4_signature(secret, auth, amz_date, creq):
    def mac(key, msg):
        return hmac.new(key, msg.encode(), hashlib.sha256).digest()
    string_to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, auth["scope"],
                                hashlib.sha256(creq.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (auth["date"], auth["region"], auth["service"], "aws4_request"):
        key = mac(key, part)
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


class StsService(Service):
    """STS query protocol (POST form body, XML responses)."""

    name = "sts"
    content_type = "text/xml"
    SESSION_NAME_RE = re.compile(r"[\w+=,.@-]{2,64}")
    ROLE_ARN_RE = re.compile(r"arn:aws[\w-]*:iam::\d{12}:role/(?:[\w+=,.@-]+/)*([\w+=,.@-]+)")

    def inspect(self, req, entry):
        params = dict(urllib.parse.parse_qsl(req.query, keep_blank_values=True))
        ctype = req.header("content-type") or ""
        if req.method == "POST" and ctype.startswith("application/x-www-form-urlencoded"):
            params.update(urllib.parse.parse_qsl(req.body.decode("utf-8", "replace"),
                                                 keep_blank_values=True))
        req.params = params
        entry["action"] = params.get("Action")
        entry["version"] = params.get("Version")
        entry["role_arn"] = params.get("RoleArn")
        entry["role_session_name"] = params.get("RoleSessionName")
        entry["duration_seconds"] = params.get("DurationSeconds")
        auth = parse_sigv4_authorization(req.header("authorization"))
        req.auth = auth
        entry["signed"] = auth is not None
        entry["caller_akid"] = auth and auth["akid"]
        entry["signing_region"] = auth and auth["region"]
        entry["signing_service"] = auth and auth["service"]
        entry["security_token_present"] = req.header("x-amz-security-token") is not None
        if entry["action"]:
            self.world.log.count_action(self.name, entry["action"])

    def serve(self, req, entry, fault):
        action = req.params.get("Action")
        handler = {"AssumeRoleWithWebIdentity": self.assume_role_with_web_identity,
                   "AssumeRole": self.assume_role,
                   "GetCallerIdentity": self.get_caller_identity}.get(action)
        if handler is None:
            return self.error_reply(400, "InvalidAction",
                                    "Could not find operation %s for version %s"
                                    % (action, req.params.get("Version")))
        if req.params.get("Version") != "2011-06-15":
            return self.error_reply(400, "InvalidAction", "bad or missing Version")
        return handler(req, entry, fault)

    # --- actions ------------------------------------------------------

    def assume_role_with_web_identity(self, req, entry, fault):
        err = self.validate_role_params(req.params)
        if err:
            return err
        token = req.params.get("WebIdentityToken")
        with self.world.lock:
            expected = self.world.web_identity_token
        entry["web_identity_token_ok"] = token == expected
        if not token:
            return self.validation_error("webIdentityToken", "Member must not be null")
        if token != expected:
            return self.error_reply(400, "InvalidIdentityToken",
                                    "Couldn't verify the web identity token (fake)")
        result = ("<SubjectFromWebIdentityToken>system:serviceaccount:kong:kong"
                  "</SubjectFromWebIdentityToken>"
                  "<Audience>sts.amazonaws.com</Audience>"
                  "<Provider>arn:aws:iam::%s:oidc-provider/oidc.eks.fake</Provider>"
                  % ACCOUNT_ID)
        return self.credentials_response("AssumeRoleWithWebIdentity", req, entry, fault, result)

    def assume_role(self, req, entry, fault):
        err = self.authenticate(req, entry)
        if err:
            return err
        err = self.validate_role_params(req.params)
        if err:
            return err
        return self.credentials_response("AssumeRole", req, entry, fault, "")

    def get_caller_identity(self, req, entry, fault):
        err = self.authenticate(req, entry)
        if err:
            return err
        cred = self.world.issuer.lookup(entry["caller_akid"])
        if cred:
            role = cred.role_arn.rsplit("/", 1)[-1]
            arn = "arn:aws:sts::%s:assumed-role/%s/fake-session" % (ACCOUNT_ID, role)
        else:
            arn = "arn:aws:iam::%s:user/fake-user" % ACCOUNT_ID
        body = ("<Arn>%s</Arn><UserId>%s</UserId><Account>%s</Account>"
                % (escape(arn), escape(entry["caller_akid"]), ACCOUNT_ID))
        return self.xml_response("GetCallerIdentity", body)

    # --- pieces -------------------------------------------------------

    def validate_role_params(self, params):
        arn, name = params.get("RoleArn"), params.get("RoleSessionName")
        if not arn:
            return self.validation_error("roleArn", "Member must not be null")
        if not self.ROLE_ARN_RE.fullmatch(arn):
            return self.validation_error("roleArn", "Member must be a role ARN")
        if not name:
            return self.validation_error("roleSessionName", "Member must not be null")
        if not self.SESSION_NAME_RE.fullmatch(name):
            return self.validation_error(
                "roleSessionName",
                "Member must satisfy regular expression pattern: [\\w+=,.@-]*")
        return None

    def authenticate(self, req, entry):
        """Check the SigV4 signature; record the outcome in the log entry."""
        try:
            entry["signature_valid"] = self.verify_signature(req)
        except SigV4Error as err:
            entry["signature_valid"] = False
            entry["auth_error"] = err.code
            return self.error_reply(403, err.code, err.message)
        return None

    def verify_signature(self, req):
        """True if verified, None if the secret is unknown (lenient mode)."""
        auth = req.auth
        if auth is None:
            raise SigV4Error("MissingAuthenticationToken",
                             "Request is missing Authentication Token")
        secret, session_token, cred = self.world.secret_for(auth["akid"])
        if secret is None:
            if self.world.sts_auth == "strict":
                raise SigV4Error("InvalidClientTokenId",
                                 "The security token included in the request is invalid.")
            return None
        if session_token is not None and req.header("x-amz-security-token") != session_token:
            raise SigV4Error("InvalidClientTokenId",
                             "The security token included in the request is invalid.")
        if cred is not None and cred.expiration <= time.time():
            raise SigV4Error("ExpiredToken",
                             "The security token included in the request is expired")
        amz_date = req.header("x-amz-date") or ""
        try:
            signed_at = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
        except ValueError:
            raise SigV4Error("IncompleteSignature", "missing or bad X-Amz-Date")
        if abs(signed_at - time.time()) > 300:
            raise SigV4Error("SignatureDoesNotMatch", "Signature expired: %s" % amz_date)
        if "host" not in auth["signed_headers"]:
            raise SigV4Error("IncompleteSignature", "host must be a signed header")
        creq = canonical_request(req, auth["signed_headers"])
        if not hmac.compare_digest(sigv4_signature(secret, auth, amz_date, creq),
                                   auth["signature"]):
            raise SigV4Error("SignatureDoesNotMatch",
                             "The request signature we calculated does not match the "
                             "signature you provided.")
        return True

    def credentials_response(self, action, req, entry, fault, extra_result):
        role_arn = req.params["RoleArn"]
        session = req.params["RoleSessionName"]
        cred = self.world.credential(self.name, role_arn, fault)
        entry["issued_akid"] = cred.access_key_id
        role = self.ROLE_ARN_RE.fullmatch(role_arn).group(1)
        account = role_arn.split(":")[4]
        body = (
            "<Credentials>"
            "<AccessKeyId>%s</AccessKeyId>"
            "<SecretAccessKey>%s</SecretAccessKey>"
            "<SessionToken>%s</SessionToken>"
            "<Expiration>%s</Expiration>"
            "</Credentials>"
            "<AssumedRoleUser>"
            "<AssumedRoleId>AROAFAKEFAKEFAKEFAKE1:%s</AssumedRoleId>"
            "<Arn>arn:aws:sts::%s:assumed-role/%s/%s</Arn>"
            "</AssumedRoleUser>%s"
            % (cred.access_key_id, escape(cred.secret_access_key), escape(cred.session_token),
               cred.expiration_iso, escape(session), account, escape(role), escape(session),
               extra_result))
        return self.xml_response(action, body)

    def xml_response(self, action, result_body):
        request_id = str(uuid.uuid4())
        xml = ('<%sResponse xmlns="%s">\n  <%sResult>%s</%sResult>\n'
               '  <ResponseMetadata><RequestId>%s</RequestId></ResponseMetadata>\n'
               '</%sResponse>\n'
               % (action, STS_NAMESPACE, action, result_body, action, request_id, action))
        return Reply(200, xml, self.content_type, {"x-amzn-RequestId": request_id})

    def validation_error(self, member, constraint):
        return self.error_reply(400, "ValidationError",
                                "1 validation error detected: Value at '%s' failed to "
                                "satisfy constraint: %s" % (member, constraint))

    def error_reply(self, status, code, message):
        request_id = str(uuid.uuid4())
        kind = "Sender" if status < 500 else "Receiver"
        xml = ('<ErrorResponse xmlns="%s">\n  <Error>\n    <Type>%s</Type>\n'
               '    <Code>%s</Code>\n    <Message>%s</Message>\n  </Error>\n'
               '  <RequestId>%s</RequestId>\n</ErrorResponse>\n'
               % (STS_NAMESPACE, kind, escape(code), escape(message), request_id))
        return Reply(status, xml, self.content_type, {"x-amzn-RequestId": request_id})

    def garbage(self, req):
        return (b'<AssumeRoleResponse xmlns="%s"><AssumeRoleResult><Credentials>'
                b'<AccessKeyId>ASIA' % STS_NAMESPACE.encode())


# ---------------------------------------------------------------- control --

class ControlService:
    """JSON control API (not counted in the request log).

    GET  /info /counts /requests[?service=S] /credentials
    POST /mode {service, mode, seconds?, path?, action?, count?, status?}
    POST /lifetime {seconds, service?}     POST /reuse {service, min_remaining}
    POST /reset {counts_only?}             POST /rotate_tokens
    POST /keys {akid, secret}              POST /imds {role_name?, region?, invalidate_tokens?}
    POST /ecs {require_auth}               POST /sts {auth: lenient|strict}
    POST /shutdown
    """

    name = "control"

    def __init__(self, world, info, stop_event):
        self.world = world
        self.info = info
        self.stop_event = stop_event

    def handle(self, req):
        try:
            data = json.loads(req.body or b"{}") if req.method == "POST" else {}
            route = self.routes().get((req.method, req.path))
            if route is None:
                return self.reply(404, {"error": "no route %s %s" % (req.method, req.path)})
            result = route(data, req)
            reply = self.reply(200, result)
            if req.path == "/shutdown":
                reply.after = self.stop_event.set
            return reply
        except (ValueError, KeyError, TypeError) as err:
            return self.reply(400, {"error": str(err)})

    def reply(self, status, obj):
        return Reply(status, json_bytes(obj), "application/json")

    def routes(self):
        return {
            ("GET", "/info"): lambda d, r: self.info,
            ("GET", "/counts"): lambda d, r: self.world.log.counts(),
            ("GET", "/requests"): self.requests,
            ("GET", "/credentials"): lambda d, r: self.world.issuer.records(),
            ("POST", "/mode"): self.set_mode,
            ("POST", "/lifetime"): self.set_lifetime,
            ("POST", "/reuse"): self.set_reuse,
            ("POST", "/reset"): self.reset,
            ("POST", "/rotate_tokens"): self.rotate_tokens,
            ("POST", "/keys"): self.add_key,
            ("POST", "/imds"): self.configure_imds,
            ("POST", "/ecs"): self.configure_ecs,
            ("POST", "/sts"): self.configure_sts,
            ("POST", "/shutdown"): self.shutdown,
        }

    def requests(self, data, req):
        service = urllib.parse.parse_qs(req.query).get("service", [None])[0]
        return self.world.log.entries(service)

    def set_mode(self, data, req):
        service, mode = data.get("service"), str(data.get("mode", "ok"))
        world = self.world
        if mode in IMDS_TOKEN_POLICIES:
            if service != "imds":
                raise ValueError("mode %s is for service imds" % mode)
            with world.lock:
                world.imds_token_policy = IMDS_TOKEN_POLICIES[mode]
                world.imds_token_forbidden_status = int(data.get("status") or 403)
            return {"imds_token_policy": world.imds_token_policy}
        fault = Fault(mode, data.get("seconds"), data.get("path"), data.get("action"),
                      data.get("count"))
        world.set_fault(service, fault)
        return {s: world.faults[s].describe() for s in SERVICES}

    def set_lifetime(self, data, req):
        self.world.set_lifetime(data["seconds"], data.get("service"))
        return self.world.lifetimes

    def set_reuse(self, data, req):
        self.world.set_reuse(data.get("service"), data.get("min_remaining"))
        return self.world.reuse

    def reset(self, data, req):
        self.world.log.reset()
        if not data.get("counts_only"):
            self.world.reset_settings()
        return {"ok": True}

    def rotate_tokens(self, data, req):
        self.world.rotate_tokens()
        return {"web_identity_token": self.world.web_identity_token,
                "container_file_token": self.world.container_file_token}

    def add_key(self, data, req):
        with self.world.lock:
            self.world.static_keys[data["akid"]] = data["secret"]
        return {"ok": True}

    def configure_imds(self, data, req):
        world = self.world
        with world.lock:
            if "role_name" in data:
                world.role_name = data["role_name"] or None
            if data.get("region"):
                world.region = data["region"]
            if data.get("invalidate_tokens"):
                world.imds_tokens.clear()
            return {"role_name": world.role_name, "region": world.region,
                    "token_policy": world.imds_token_policy}

    def configure_ecs(self, data, req):
        with self.world.lock:
            self.world.ecs_require_auth = bool(data.get("require_auth", True))
        return {"require_auth": self.world.ecs_require_auth}

    def configure_sts(self, data, req):
        auth = data.get("auth", "lenient")
        if auth not in ("lenient", "strict"):
            raise ValueError("auth must be lenient or strict")
        self.world.sts_auth = auth
        return {"auth": auth}

    def shutdown(self, data, req):
        return {"ok": True}     # handle() stops the process once this is sent


# ----------------------------------------------------------- lifecycle --

def process_start_time(pid):
    """Start time of a process (field 22 of /proc/PID/stat), or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except OSError:
        return None
    return data.rsplit(")", 1)[1].split()[19]


def watch_parent(pid, stop_event):
    """Set stop_event when process `pid` exits (pid reuse safe)."""
    started = process_start_time(pid)

    def loop():
        while not stop_event.wait(0.5):
            if process_start_time(pid) != started:
                stop_event.set()
    threading.Thread(target=loop, name="parent-watch", daemon=True).start()


def watch_stdin(stop_event):
    """Set stop_event at EOF on stdin, if stdin is a pipe or a socket."""
    try:
        mode = os.fstat(0).st_mode
    except OSError:
        return
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return

    def loop():
        try:
            while os.read(0, 65536):
                pass
        except OSError:
            pass
        stop_event.set()
    threading.Thread(target=loop, name="stdin-watch", daemon=True).start()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--emulator-dir", help="RDS emulator directory: register issued keys there")
    p.add_argument("--register-cmd",
                   help="command prefix run as PREFIX AKID SECRET TOKEN --expires TS "
                        "(default with --emulator-dir: rds-emulator add-key DIR)")
    p.add_argument("--state-dir", help="where token files and credentials.jsonl go "
                                       "(default: a new temporary directory)")
    p.add_argument("--lifetime", type=float, default=3600, help="credential lifetime, s")
    p.add_argument("--region", default="us-east-1", help="IMDS region")
    p.add_argument("--role-name", default="kong-rds-role", help="IMDS/ECS role name")
    p.add_argument("--static-key", action="append", default=[], metavar="AKID:SECRET",
                   help="extra secret the STS SigV4 verifier knows (repeatable)")
    p.add_argument("--sts-auth", choices=("lenient", "strict"), default="lenient",
                   help="strict: reject AssumeRole by unknown access keys")
    p.add_argument("--parent-pid", type=int, default=None,
                   help="exit when this process exits (default: our parent; 0: never)")
    p.add_argument("--ready-file", help="also write the start-up JSON here (atomically)")
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = p.parse_args(argv)
    args.owns_state_dir = args.state_dir is None
    if args.owns_state_dir:
        args.state_dir = tempfile.mkdtemp(prefix="fake_aws.")
    os.makedirs(args.state_dir, exist_ok=True)
    args.state_dir = os.path.abspath(args.state_dir)
    return args


def registrar_for(args):
    if args.register_cmd:
        return Registrar(shlex.split(args.register_cmd))
    if args.emulator_dir:
        if not os.access(EMULATOR_SCRIPT, os.X_OK):
            sys.exit("fake_aws: %s not found; use --register-cmd" % EMULATOR_SCRIPT)
        return Registrar([EMULATOR_SCRIPT, "add-key", os.path.abspath(args.emulator_dir)])
    return Registrar(None)


def start_info(world, servers, control):
    base = {name: "http://%s:%d" % (LOCALHOST, srv.port) for name, srv in servers.items()}
    return {
        "pid": os.getpid(),
        "imds_url": base["imds"],
        "ecs_url": base["ecs"] + ECS_PATHS[0],
        "eks_url": base["ecs"] + ECS_PATHS[1],
        "sts_url": base["sts"],
        "control_url": "http://%s:%d" % (LOCALHOST, control.port),
        "ports": dict({n: s.port for n, s in servers.items()}, control=control.port),
        "web_identity_token_file": world.web_identity_token_file,
        "web_identity_token": world.web_identity_token,
        "container_token": world.container_token,
        "container_token_file": world.container_token_file,
        "container_file_token": world.container_file_token,
        "role_name": world.role_name,
        "role_arn": world.role_arn,
        "region": world.region,
        "lifetime": world.args.lifetime,
        "account_id": ACCOUNT_ID,
        "state_dir": world.state_dir,
        "credentials_log": world.issuer.jsonl_path,
    }


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    issuer = CredentialIssuer(os.path.join(args.state_dir, "credentials.jsonl"),
                              registrar_for(args))
    world = World(args, issuer)
    stop = threading.Event()
    servers = {"imds": FakeServer(ImdsService(world)),
               "ecs": FakeServer(EcsService(world)),
               "sts": FakeServer(StsService(world))}
    control_service = ControlService(world, None, stop)
    control = FakeServer(control_service)
    control_service.info = info = start_info(world, servers, control)
    all_servers = list(servers.values()) + [control]
    for srv in all_servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    parent = os.getppid() if args.parent_pid is None else args.parent_pid
    if parent > 1:
        watch_parent(parent, stop)
    watch_stdin(stop)

    line = json.dumps(info)
    if args.ready_file:
        write_private(args.ready_file, line + "\n")
    try:
        print(line, flush=True)
    except BrokenPipeError:
        pass
    while not stop.wait(0.2):
        pass
    for srv in all_servers:     # serving threads are daemons: just stop listening
        srv.server_close()
    if args.owns_state_dir:
        shutil.rmtree(args.state_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
