"""EC2 instance metadata service (IMDSv2 tokens, role credentials, region)."""

import base64
import secrets
import time

from .common import ACCOUNT_ID
from .credentials import iso8601
from .server import Reply, json_bytes
from .service import Service

IMDS_TOKEN_POLICIES = {"imdsv1": "disabled", "imdsv2": "required",
                       "v2only": "required", "v1v2": "optional"}
IMDS_MAX_TOKEN_TTL = 21600


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
