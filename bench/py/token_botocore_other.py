"""Peer for bench/run: ElastiCache and DSQL tokens with botocore.

python token_botocore_other.py ROUNDS ITERS  ->
  "boto_ec_token ns/token per round" (wall) and "boto_ec_token_cpu" (process CPU):
      botocore.auth.SigV4QueryAuth on an AWSRequest for
      GET http://bench-cache/?Action=connect&User=iam_user (what AWS's ElastiCache
      IAM example does; no SDK ships a generator), one credentials object reused
  "boto_dsql_token" / "boto_dsql_token_cpu":
      the dsql client's generate_db_connect_admin_auth_token, one client reused

The same key, names and region as bench/lua/bench.lua's other_tokens mode.
"""
import os
import sys
import time

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import botocore.session

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
iters = int(sys.argv[2]) if len(sys.argv) > 2 else 2000

akid, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
creds = botocore.credentials.Credentials(akid, secret)
URL = "http://bench-cache/?Action=connect&User=iam_user"


def ec_token():
    request = botocore.awsrequest.AWSRequest(method="GET", url=URL)
    botocore.auth.SigV4QueryAuth(creds, "elasticache", "us-east-1", expires=900).add_auth(request)
    return request.url[len("http://"):]


session = botocore.session.get_session()
session.set_credentials(akid, secret)
client = session.create_client("dsql", region_name="us-east-1")
DSQL_HOST = "benchabcdefghijklmnopqrstu.dsql.us-east-1.on.aws"


def dsql_token():
    return client.generate_db_connect_admin_auth_token(DSQL_HOST, "us-east-1", 900)


tok = ec_token()
assert tok.startswith("bench-cache/?Action=connect&User=iam_user&X-Amz-Algorithm=") and "%2Felasticache%2F" in tok, tok
tok = dsql_token()
assert tok.startswith(DSQL_HOST + "/?Action=DbConnectAdmin&") and "%2Fdsql%2F" in tok, tok


def run(name, gen):
    out, cpu = [], []
    for r in range(rounds + 1):  # round 0 is a warm-up
        t0, c0 = time.perf_counter_ns(), time.process_time_ns()
        for _ in range(iters):
            gen()
        dt, dc = time.perf_counter_ns() - t0, time.process_time_ns() - c0
        if r > 0:
            out.append("%.1f" % (dt / iters))
            cpu.append("%.1f" % (dc / iters))
    print(name, " ".join(out))
    print(name + "_cpu", " ".join(cpu))


run("boto_ec_token", ec_token)
run("boto_dsql_token", dsql_token)
