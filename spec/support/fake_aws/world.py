"""The fake's shared state: settings, faults, tokens, credentials to hand out."""

import base64
import json
import os
import secrets
import threading
import time
import uuid

from .common import ACCOUNT_ID, SERVICES, write_private
from .credentials import read_emulator_keys
from .faults import OK
from .requestlog import RequestLog


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
