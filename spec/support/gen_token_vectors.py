#!/usr/bin/env python3
"""Oracle vectors for spec/other_tokens_spec.lua: ElastiCache, MemoryDB and
Aurora DSQL IAM auth tokens made by botocore, printed as a Lua literal.

Run (needs PyPI once; nothing here runs in the tests, which hold the output
as literals):

    python3 -m venv /tmp/boto && /tmp/boto/bin/pip install botocore
    /tmp/boto/bin/python spec/support/gen_token_vectors.py            # prints the Lua block
    /tmp/boto/bin/python spec/support/gen_token_vectors.py --update   # rewrites it in the spec

The vectors in the spec were made with botocore 1.44.8 (Python 3.11).

How each token is made:

- ElastiCache / MemoryDB: no SDK ships a generator, so botocore's own SigV4
  query signer signs what AWS's ElastiCache IAM documentation describes:
  botocore.auth.SigV4QueryAuth(credentials, "elasticache" | "memorydb", region,
  expires=900) on botocore.awsrequest.AWSRequest("GET",
  "http://<cache_name>/?Action=connect&User=<user>[&ResourceType=ServerlessCache]"),
  and the token is the signed URL without "http://". The cache name is
  lowercased first (our API promises it; botocore signs the host header
  lowercased anyway, but would keep the name's case in the token's text:
  the upper-case case below checks that only the text differs).
- DSQL: botocore's own dsql client, generate_db_connect_auth_token /
  generate_db_connect_admin_auth_token(Hostname, Region, ExpiresIn).

Time is fixed by replacing botocore.auth.get_current_datetime (what
SigV4Auth.add_auth reads; botocore's tests patch the clock the same way). The
script also re-runs itself under `faketime` (when installed) and checks that
real faked time gives the same tokens, and has the emulator's independent
verifier (tools/rds-emulator/verifier.py) accept the DSQL ones.
"""
import datetime
import os
import re
import shutil
import subprocess
import sys
import urllib.parse

import botocore
import botocore.auth
import botocore.awsrequest
import botocore.credentials
import botocore.session

SPEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "other_tokens_spec.lua")
BEGIN = "-- BEGIN VECTORS (spec/support/gen_token_vectors.py --update)"
END = "-- END VECTORS"

AKID = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
# A session token with characters that must be percent-encoded (+ / =).
SESSION = "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ+example/session=token"
T1 = 1724709600  # 2024-08-26T22:00:00Z (the RDS vector 4 time)
T2 = 1767225599  # 2025-12-31T23:59:59Z (a day's last second)

ELASTICACHE = [
    # name, cache_name, user, region, serverless, service, session, time
    ("elasticache, node-based, long-term keys", "my-cache", "iam-user-01", "us-east-1", False,
     "elasticache", None, T1),
    ("elasticache, serverless, session token", "my-serverless-cache", "iam-user-01", "eu-west-1", True,
     "elasticache", SESSION, T1),
    ("elasticache, user needing percent-encoding", "my-cache", "app user+1/\u00fc=&", "us-east-1", False,
     "elasticache", None, T2),
    ("elasticache, upper-case cache name (lowercased)", "MyCache-PROD", "iam-user-01", "ap-southeast-2",
     False, "elasticache", SESSION, T2),
    ("memorydb, long-term keys", "my-memorydb-cluster", "iam-user-01", "us-east-1", False,
     "memorydb", None, T1),
    ("memorydb, session token", "my-memorydb-cluster", "iam-user-01", "eu-central-1", False,
     "memorydb", SESSION, T2),
]

DSQL_HOST = "abc0def1baz2quux3quuux4.dsql.us-west-2.on.aws"
DSQL = [
    # name, host, region, admin, expires_in, session, time
    ("dsql DbConnect, 900 s, long-term keys", DSQL_HOST, "us-west-2", False, 900, None, T1),
    ("dsql DbConnectAdmin, 900 s, session token", DSQL_HOST, "us-west-2", True, 900, SESSION, T1),
    ("dsql DbConnect, 3600 s, session token", DSQL_HOST, "us-west-2", False, 3600, SESSION, T2),
    ("dsql DbConnectAdmin, 3600 s, long-term keys", "kiabc2defghijklmnopqrstuvw.dsql.eu-west-1.on.aws",
     "eu-west-1", True, 3600, None, T2),
]


def fixed_clock(t):
    when = datetime.datetime.fromtimestamp(t, datetime.timezone.utc).replace(tzinfo=None)
    botocore.auth.get_current_datetime = lambda remove_tzinfo=True: when


def real_clock():
    import botocore.compat
    botocore.auth.get_current_datetime = botocore.compat.get_current_datetime


def elasticache_token(cache_name, user, region, serverless, service, session, lowercase=True):
    name = cache_name.lower() if lowercase else cache_name
    query = "Action=connect&User=" + urllib.parse.quote(user, safe="")
    if serverless:
        query += "&ResourceType=ServerlessCache"
    request = botocore.awsrequest.AWSRequest(method="GET", url="http://%s/?%s" % (name, query))
    creds = botocore.credentials.Credentials(AKID, SECRET, session)
    botocore.auth.SigV4QueryAuth(creds, service, region, expires=900).add_auth(request)
    url = request.url
    assert url.startswith("http://"), url
    return url[len("http://"):]


def dsql_token(host, region, admin, expires_in, session):
    s = botocore.session.get_session()
    client = s.create_client("dsql", region_name=region, aws_access_key_id=AKID,
                             aws_secret_access_key=SECRET, aws_session_token=session)
    gen = client.generate_db_connect_admin_auth_token if admin else client.generate_db_connect_auth_token
    return gen(Hostname=host, Region=region, ExpiresIn=expires_in)


def all_tokens(clock):
    """[(kind, case, token)] for every case; clock(t) sets the time."""
    out = []
    for c in ELASTICACHE:
        name, cache_name, user, region, serverless, service, session, t = c
        clock(t)
        out.append((service, c, elasticache_token(cache_name, user, region, serverless, service, session)))
    for c in DSQL:
        name, host, region, admin, expires_in, session, t = c
        clock(t)
        out.append(("dsql", c, dsql_token(host, region, admin, expires_in, session)))
    return out


def lua_str(s):
    out = []
    for b in s.encode("utf-8"):
        ch = chr(b)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= b < 0x7F:
            out.append(ch)
        else:
            out.append("\\%d" % b)
    return '"' + "".join(out) + '"'


def lua_val(v):
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return lua_str(v)


def lua_block(tokens):
    lines = [BEGIN,
             "-- botocore %s; keys %s / %s; session token %s" % (botocore.__version__, AKID, SECRET, SESSION),
             "local AKID, SECRET, SESSION = %s, %s, %s" % (lua_str(AKID), lua_str(SECRET), lua_str(SESSION)),
             "local VECTORS = {"]
    for kind, c, token in tokens:
        if kind == "dsql":
            name, host, region, admin, expires_in, session, t = c
            fields = [("kind", kind), ("host", host), ("region", region), ("admin", admin),
                      ("expires_in", expires_in)]
        else:
            name, cache_name, user, region, serverless, service, session, t = c
            fields = [("kind", kind), ("cache_name", cache_name), ("user", user), ("region", region),
                      ("serverless", serverless)]
        body = ", ".join("%s = %s" % (k, lua_val(v)) for k, v in fields)
        sess = "SESSION" if session else "nil"
        lines.append("  { name = %s, %s," % (lua_str(name), body))
        lines.append("    access_key_id = AKID, secret_access_key = SECRET, session_token = %s, time = %d," % (sess, t))
        lines.append("    token = %s }," % lua_str(token))
    lines.append("}")
    lines.append(END)
    return "\n".join(lines)


def check_upper_case():
    """botocore signs the host lowercased: an upper-case name changes the
    token's text, not its signature."""
    for c in ELASTICACHE:
        name, cache_name, user, region, serverless, service, session, t = c
        if cache_name == cache_name.lower():
            continue
        fixed_clock(t)
        low = elasticache_token(cache_name, user, region, serverless, service, session)
        raw = elasticache_token(cache_name, user, region, serverless, service, session, lowercase=False)
        assert raw.startswith(cache_name + "/?"), raw
        assert raw.split("&X-Amz-Signature=")[1] == low.split("&X-Amz-Signature=")[1], (raw, low)
        assert raw[len(cache_name):] == low[len(cache_name):]


def faketime_check(tokens):
    """Re-run under faketime, one process per time, and compare."""
    if not shutil.which("faketime"):
        sys.stderr.write("gen_token_vectors: faketime not installed, clock patch only\n")
        return
    want = {}
    for kind, c, token in tokens:
        want.setdefault(c[-1], []).append(token)
    for t, toks in want.items():
        stamp = datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        env = dict(os.environ, TZ="UTC")
        out = subprocess.run(["faketime", "-f", "@%s x0.0001" % stamp, sys.executable, __file__, "--faketime", str(t)],
                             env=env, check=True, capture_output=True, text=True).stdout.split()
        if out != toks:
            raise SystemExit("faketime and the clock patch disagree at %d:\n%s\n%s" % (t, out, toks))
    sys.stderr.write("gen_token_vectors: faketime gives the same %d tokens\n" % len(tokens))


def verifier_check(tokens):
    """The emulator's own SigV4 verifier (tools/rds-emulator/verifier.py, no
    botocore) accepts every DSQL token: a second, independent derivation."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "rds-emulator"))
    import verifier
    keys = {AKID: {"secret": SECRET, "session_token": None, "expires": None}}
    for kind, c, token in tokens:
        if kind != "dsql":
            continue
        name, host, region, admin, expires_in, session, t = c
        keys[AKID]["session_token"] = session
        verifier.verify(token, "admin" if admin else "app", region, t, keys, {host}, {}, "dsql")


def main(argv):
    if argv[:1] == ["--faketime"]:  # child of faketime_check: real (faked) clock, one time
        t = int(argv[1])
        for kind, c, token in all_tokens(lambda _t: real_clock()):
            if c[-1] == t:
                print(token)
        return 0
    check_upper_case()
    tokens = all_tokens(fixed_clock)
    faketime_check(tokens)
    verifier_check(tokens)
    block = lua_block(tokens)
    if argv[:1] == ["--update"]:
        with open(SPEC) as f:
            text = f.read()
        pat = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
        if not pat.search(text):
            raise SystemExit("no vector block in %s" % SPEC)
        with open(SPEC, "w") as f:
            f.write(pat.sub(lambda _m: block, text, count=1))
        sys.stderr.write("gen_token_vectors: updated %s\n" % os.path.normpath(SPEC))
    else:
        print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
