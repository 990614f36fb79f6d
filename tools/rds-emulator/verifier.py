#!/usr/bin/python3
"""RDS IAM auth token verifier for the local RDS emulator.

Standard library only, and independent of the project's Rust signer: it
re-derives the AWS SigV4 query-presign signature from the token on its own.

Two kinds of token, chosen per emulator ("service" in DIR/config.json, or
--service in check mode):
  rds-db (default)  an RDS IAM token: host:port/?Action=connect&DBUser=...,
                    credential scope service rds-db, X-Amz-Expires 1..900
  dsql              an Aurora DSQL token: host/?Action=DbConnect (DbConnectAdmin
                    for the database user "admin"), no port, no DBUser,
                    credential scope service dsql, X-Amz-Expires 1..604800

Modes:
  verifier.py --pam DIR
      Called by pam_rds_iam.so. Reads "USER\\0TOKEN" on stdin, checks the token
      against DIR/config.json (region, port, service), DIR/allowed_hosts and
      DIR/keys.json, appends one line to DIR/verifier.log, exits 0 (accept)
      or 1 (reject).
  verifier.py --check --now UNIX --user U --region R --keys FILE --hosts h:p,...
                      [--service rds-db|dsql]
      Self-test mode: reads the token on stdin, prints ACCEPT or
      "REJECT: reason" on stdout, exits 0 / 1 (2 on usage error). With
      --service dsql, --hosts lists host names without ports.

Never logs secrets, session tokens, signatures or tokens.
"""

import calendar
import hashlib
import hmac
import json
import os
import re
import sys
import time
import urllib.parse

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "rds-db"
DSQL = "dsql"
TERMINATOR = "aws4_request"
# Longest X-Amz-Expires each service takes.
MAX_EXPIRES = {SERVICE: 900, DSQL: 604800}
CLOCK_SKEW = 300  # seconds a token's X-Amz-Date may lie in the future
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_TOKEN_LEN = 64 * 1024

REQUIRED = (
    "Action",
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
)

# Characters allowed raw in the query part of a token: RFC 3986 unreserved,
# '%' (escapes) and the '&' / '=' separators. Everything else (notably '+',
# '/', ' ') must have been percent-encoded by the signer.
_QUERY_CHARS = re.compile(r"^[A-Za-z0-9\-._~%&=]*$")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_HOST = re.compile(r"^[A-Za-z0-9._-]+$")
_AMZ_DATE = re.compile(r"^(\d{8})T(\d{6})Z$")
_SIG = re.compile(r"^[0-9a-f]{64}$")


class Reject(Exception):
    pass


def rfc3986(s):
    return urllib.parse.quote(s, safe="-_.~")


def _decode(component):
    if _BAD_ESCAPE.search(component):
        raise Reject("malformed percent-encoding")
    try:
        return urllib.parse.unquote(component, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise Reject("invalid UTF-8 in token")


def parse_token(token, service=SERVICE):
    """Split a token into (host, port, {param: value}); raises Reject.
    A dsql token has no port: port is None."""
    if len(token) > MAX_TOKEN_LEN:
        raise Reject("token too long")
    if not token:
        raise Reject("empty token")
    if "://" in token:
        raise Reject("token must not carry a URL scheme")
    hostport, sep, query = token.partition("/?")
    if not sep:
        raise Reject("malformed token (no '/?')")
    if service == DSQL:
        if ":" in hostport:
            raise Reject("a dsql token's host has no port")
        host, port = hostport, None
        if not host or not _HOST.match(host):
            raise Reject("malformed host in token")
    else:
        host, colon, port = hostport.rpartition(":")
        if not colon or not host or not _HOST.match(host):
            raise Reject("malformed host:port in token")
        if not port.isdigit() or not 0 < int(port) < 65536 or port != str(int(port)):
            raise Reject("malformed port in token")
        port = int(port)
    if not _QUERY_CHARS.match(query):
        raise Reject("token has characters that must be percent-encoded")
    params = {}
    for part in query.split("&"):
        name, eq, value = part.partition("=")
        if not eq or not name:
            raise Reject("malformed query parameter")
        name, value = _decode(name), _decode(value)
        if name in params:
            raise Reject("duplicate parameter %s" % name)
        params[name] = value
    return host, port, params


def signing_key(secret, date, region, service):
    k = hmac.new(("AWS4" + secret).encode("utf-8"), date.encode(), hashlib.sha256).digest()
    for part in (region, service, TERMINATOR):
        k = hmac.new(k, part.encode("utf-8"), hashlib.sha256).digest()
    return k


def expected_signature(host_header, params, secret, date, region, service=SERVICE):
    pairs = sorted(
        (rfc3986(k), rfc3986(v)) for k, v in params.items() if k != "X-Amz-Signature"
    )
    canonical_query = "&".join("%s=%s" % kv for kv in pairs)
    canonical_request = "\n".join(
        [
            "GET",
            "/",
            canonical_query,
            "host:%s\n" % host_header,
            "host",
            EMPTY_SHA256,
        ]
    )
    scope = "/".join([date, region, service, TERMINATOR])
    string_to_sign = "\n".join(
        [
            ALGORITHM,
            params["X-Amz-Date"],
            scope,
            hashlib.sha256(canonical_request.encode("utf-8")).hexdigest(),
        ]
    )
    key = signing_key(secret, date, region, service)
    return hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def verify(token, user, region, now, keys, allowed_hosts, info, service=SERVICE):
    """Raise Reject(reason) unless the token is valid. Fills info['akid'].
    allowed_hosts: "host:port" strings (rds-db) or host names (dsql)."""
    if service not in MAX_EXPIRES:
        raise Reject("unknown service %s" % service)
    host, port, p = parse_token(token, service)
    info["akid"] = p.get("X-Amz-Credential", "-").split("/")[0]
    required = REQUIRED[:1] + ("DBUser",) + REQUIRED[1:] if service == SERVICE else REQUIRED
    for name in required:
        if name not in p:
            raise Reject("missing %s" % name)
    if service == DSQL:
        # As Aurora DSQL: the admin role needs dsql:DbConnectAdmin, every
        # other role dsql:DbConnect; the token names no user.
        action = "DbConnectAdmin" if user == "admin" else "DbConnect"
        if p["Action"] != action:
            raise Reject("Action is not %s" % action)
        if "DBUser" in p:
            raise Reject("a dsql token has no DBUser")
    else:
        if p["Action"] != "connect":
            raise Reject("Action is not connect")
        if p["DBUser"] != user:
            raise Reject("DBUser does not match the database user")
    if p["X-Amz-Algorithm"] != ALGORITHM:
        raise Reject("unsupported X-Amz-Algorithm")

    cred = p["X-Amz-Credential"].split("/")
    if len(cred) != 5 or not cred[0]:
        raise Reject("malformed X-Amz-Credential")
    akid, cdate, cregion, cservice, cterm = cred

    m = _AMZ_DATE.match(p["X-Amz-Date"])
    if not m:
        raise Reject("malformed X-Amz-Date")
    try:
        signed_at = calendar.timegm(time.strptime(p["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))
    except ValueError:
        raise Reject("malformed X-Amz-Date")
    if cdate != m.group(1):
        raise Reject("credential scope date differs from X-Amz-Date")
    if cregion != region:
        raise Reject("credential scope region %s is not %s" % (cregion, region))
    if cservice != service:
        raise Reject("credential scope service is not %s" % service)
    if cterm != TERMINATOR:
        raise Reject("credential scope does not end in aws4_request")

    exp = p["X-Amz-Expires"]
    if not exp.isdigit() or exp != str(int(exp)) or not 1 <= int(exp) <= MAX_EXPIRES[service]:
        raise Reject("X-Amz-Expires must be 1..%d" % MAX_EXPIRES[service])
    if signed_at > now + CLOCK_SKEW:
        raise Reject("X-Amz-Date is in the future")
    if now > signed_at + int(exp):
        raise Reject("token expired")
    if p["X-Amz-SignedHeaders"] != "host":
        raise Reject("X-Amz-SignedHeaders must be host")
    if not _SIG.match(p["X-Amz-Signature"]):
        raise Reject("malformed X-Amz-Signature")

    host_header = host.lower() if port is None else "%s:%d" % (host.lower(), port)
    if host_header not in allowed_hosts:
        raise Reject("token is for %s, which this server does not answer to" % host_header)

    entry = keys.get(akid)
    if not isinstance(entry, dict) or not isinstance(entry.get("secret"), str):
        raise Reject("unknown access key")
    want_st = entry.get("session_token")
    got_st = p.get("X-Amz-Security-Token")
    if want_st:
        if got_st is None:
            raise Reject("missing X-Amz-Security-Token")
        if not hmac.compare_digest(got_st.encode("utf-8"), want_st.encode("utf-8")):
            raise Reject("wrong X-Amz-Security-Token")
    elif got_st is not None:
        raise Reject("X-Amz-Security-Token given for long-term credentials")
    expires = entry.get("expires")
    if expires is not None and now > float(expires):
        raise Reject("credentials expired")

    want = expected_signature(host_header, p, entry["secret"], cdate, region, service)
    if not hmac.compare_digest(want, p["X-Amz-Signature"]):
        raise Reject("signature mismatch")


def load_keys(path):
    try:
        with open(path, "r", encoding="utf-8") as f:
            keys = json.load(f)
    except FileNotFoundError:
        return {}
    if not isinstance(keys, dict):
        raise ValueError("keys file is not a JSON object")
    return keys


def log_line(path, user, akid, ok, reason):
    if not path:
        return
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    line = "%s pid=%d user=%s akid=%s %s" % (
        stamp,
        os.getpid(),
        json.dumps(user[:128]),
        json.dumps(akid[:128]),
        "ACCEPT" if ok else "REJECT reason=%s" % json.dumps(reason),
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, (line + "\n").encode("utf-8", "backslashreplace"))
    finally:
        os.close(fd)


def run(token, user, region, now, keys_path, allowed_hosts, log_path, service=SERVICE):
    info = {"akid": "-"}
    try:
        keys = load_keys(keys_path)
        verify(token, user, region, now, keys, allowed_hosts, info, service)
        ok, reason = True, ""
    except Reject as e:
        ok, reason = False, str(e)
    except Exception as e:  # never accept on an internal error
        ok, reason = False, "internal error: %s" % type(e).__name__
    try:
        log_line(log_path, user, info["akid"], ok, reason)
    except OSError as e:
        sys.stderr.write("verifier: cannot write log: %s\n" % e)
    return ok, reason


def pam_mode(directory):
    data = sys.stdin.buffer.read(MAX_TOKEN_LEN + 1024)
    user_b, sep, token_b = data.partition(b"\0")
    log_path = os.path.join(directory, "verifier.log")
    try:
        user = user_b.decode("utf-8")
        token = token_b.decode("utf-8")
    except UnicodeDecodeError:
        log_line(log_path, user_b.decode("utf-8", "replace"), "-", False, "input not UTF-8")
        return 1
    if not sep:
        log_line(log_path, user, "-", False, "no token supplied")
        return 1
    try:
        with open(os.path.join(directory, "config.json"), "r", encoding="utf-8") as f:
            cfg = json.load(f)
    except OSError as e:
        log_line(log_path, user, "-", False, "emulator setup: cannot read config.json (%s)" % type(e).__name__)
        return 1
    port = int(cfg["port"])
    service = cfg.get("service", SERVICE)
    # rds-db: "host:port"; dsql: bare host names (NAME:PORT lines are for rds-db only)
    if service == DSQL:
        hosts = set(cfg.get("hosts", []))
    else:
        hosts = {"%s:%d" % (h, port) for h in cfg.get("hosts", [])}
    try:
        with open(os.path.join(directory, "allowed_hosts"), "r", encoding="utf-8") as f:
            for line in f:
                line = line.strip().lower()
                if not line or line.startswith("#"):
                    continue
                if service == DSQL:
                    if ":" not in line:
                        hosts.add(line)
                else:
                    hosts.add(line if ":" in line else "%s:%d" % (line, port))
    except FileNotFoundError:
        pass
    except OSError as e:
        log_line(log_path, user, "-", False, "emulator setup: cannot read allowed_hosts (%s)" % type(e).__name__)
        return 1
    ok, _ = run(
        token,
        user,
        cfg["region"],
        time.time(),
        os.path.join(directory, "keys.json"),
        hosts,
        log_path,
        service,
    )
    return 0 if ok else 1


def check_mode(argv):
    import argparse

    ap = argparse.ArgumentParser(prog="verifier.py --check")
    ap.add_argument("--now", type=float, default=None, help="unix time (default: now)")
    ap.add_argument("--user", required=True)
    ap.add_argument("--region", required=True)
    ap.add_argument("--keys", required=True, help="keys.json path")
    ap.add_argument("--hosts", required=True, help="comma list of host:port (dsql: host names)")
    ap.add_argument("--service", default=SERVICE, choices=sorted(MAX_EXPIRES), help="kind of token (default rds-db)")
    ap.add_argument("--log", default=None, help="append a log line here")
    a = ap.parse_args(argv)
    token = sys.stdin.read().strip()
    hosts = {h.strip().lower() for h in a.hosts.split(",") if h.strip()}
    now = time.time() if a.now is None else a.now
    ok, reason = run(token, a.user, a.region, now, a.keys, hosts, a.log, a.service)
    print("ACCEPT" if ok else "REJECT: %s" % reason)
    return 0 if ok else 1


def main(argv):
    if len(argv) == 2 and argv[0] == "--pam":
        try:
            return pam_mode(argv[1])
        except Exception as e:
            sys.stderr.write("rds-emulator verifier: internal error: %s\n" % type(e).__name__)
            return 1
    if argv and argv[0] == "--check":
        return check_mode(argv[1:])
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
