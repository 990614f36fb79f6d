"""STS query protocol: actions, SigV4 verification and XML answers."""

import calendar
import hashlib
import hmac
import re
import time
import urllib.parse
import uuid
from xml.sax.saxutils import escape

from .common import ACCOUNT_ID
from .server import Reply
from .service import Service

STS_NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/"


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
