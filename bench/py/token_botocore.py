"""Peer for bench/run: botocore generate_db_auth_token with one reused client.

python token_botocore.py ROUNDS ITERS  ->  "boto_token ns/token per round" (wall), "boto_token_cpu" (process CPU)
"""
import os
import sys
import time

import botocore
import botocore.session

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
iters = int(sys.argv[2]) if len(sys.argv) > 2 else 2000

session = botocore.session.get_session()
session.set_credentials(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
client = session.create_client("rds", region_name="us-east-1")
kw = dict(DBHostname="bench-db.abc123.us-east-1.rds.amazonaws.com", Port=5432,
          DBUsername="iam_user", Region="us-east-1")
tok = client.generate_db_auth_token(**kw)
assert "X-Amz-Signature=" in tok, tok
print("version_botocore", botocore.__version__)
print("version_python", sys.version.split()[0])

out, cpu = [], []
gen = client.generate_db_auth_token
for r in range(rounds + 1):  # round 0 is a warm-up
    t0, c0 = time.perf_counter_ns(), time.process_time_ns()
    for _ in range(iters):
        gen(**kw)
    dt, dc = time.perf_counter_ns() - t0, time.process_time_ns() - c0
    if r > 0:
        out.append("%.1f" % (dt / iters))
        cpu.append("%.1f" % (dc / iters))
print("boto_token", " ".join(out))
print("boto_token_cpu", " ".join(cpu))
