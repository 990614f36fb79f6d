"""Turns bench/run's raw result lines into the table and bench/results.md.

    python3 report.py RAW_FILE [RAW_FILE ...] RESULTS_MD
    python3 report.py --nginx-only NGINX_RAW RESULTS_MD

RAW_FILE lines: `name value value ...`. The same name may appear on several
lines (one per pass / round); values accumulate. `version_*` and `meta_*`
lines carry text. Missing raw files are skipped (bench/nginx/run may not have
run). `--nginx-only` (bench/nginx/run alone) prints the nginx tables and
replaces only the nginx section of RESULTS_MD (bench/nginx/report_nginx.py),
keeping the rest. Standard library only.
"""
import os
import statistics
import sys
from collections import OrderedDict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "nginx"))
import report_nginx  # noqa: E402

args = sys.argv[1:]
nginx_only = bool(args) and args[0] == "--nginx-only"
if nginx_only:
    args = args[1:]
raw_paths, md_path = args[:-1], args[-1]

samples = OrderedDict()
meta = OrderedDict()


def read_raw(path):
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            name, _, rest = line.partition(" ")
            if name.startswith(("version_", "meta_")):
                meta[name] = rest.strip()
                continue
            try:
                vals = [float(v) for v in rest.split()]
            except ValueError:
                continue
            samples.setdefault(name, []).extend(vals)


for raw_path in raw_paths:
    if os.path.exists(raw_path):
        read_raw(raw_path)

nginx_text, nginx_md = report_nginx.section(samples, meta)
if nginx_only:
    print(nginx_text)
    if nginx_md:
        report_nginx.splice(md_path, nginx_md)
        print("wrote the nginx section of", md_path)
    sys.exit(0)


def med(name):
    v = samples.get(name)
    return statistics.median(v) if v else None


def spread(name):
    v = samples.get(name)
    if not v:
        return ""
    return "%s-%s (n=%d)" % (fmt_num(min(v)), fmt_num(max(v)), len(v))


def fmt_num(x):
    if x is None:
        return "n/a"
    if x >= 1000:
        return "{:,.0f}".format(x)
    if x >= 100:
        return "%.0f" % x
    if x >= 10:
        return "%.1f" % x
    return "%.2f" % x


def fmt_time_ns(ns):
    if ns is None:
        return "n/a"
    if ns >= 1e6:
        return "%.2f ms" % (ns / 1e6)
    if ns >= 1e3:
        return "%.2f us" % (ns / 1e3)
    return "%.0f ns" % ns


def fmt_ratio(r):
    if r is None:
        return "n/a"
    if r >= 100:
        return "%.0fx" % r
    if r >= 10:
        return "%.1fx" % r
    if r < 0.01:
        return "%.4fx" % r
    return "%.2fx" % r


rows = []  # (measurement, ours, peer name, peer, ours/peer, note)


def time_row(label, ours, peer_label, peer):
    o, p = med(ours), med(peer)
    ratio = o / p if o and p else None
    speed = p / o if o and p else None
    oc, pc = med(ours + "_cpu"), med(peer + "_cpu")
    cpu_ratio = oc / pc if oc and pc else None
    rows.append((label, fmt_time_ns(o), peer_label, fmt_time_ns(p),
                 fmt_ratio(ratio) + " time", fmt_ratio(speed) + (" faster" if speed and speed >= 1 else " as fast"),
                 ("CPU time " + fmt_ratio(cpu_ratio)) if cpu_ratio else ""))


def paired(ours, peer):
    """Median of round-by-round ratios (ours and peer ran back to back)."""
    a, b = samples.get(ours) or [], samples.get(peer) or []
    n = min(len(a), len(b))
    if n == 0:
        return None, 0
    return statistics.median(a[i] / b[i] for i in range(n) if b[i]), n


def rate_row(label, ours, peer_label, peer, unit, pair=True):
    o, p = med(ours), med(peer)
    ratio = o / p if o and p else None
    pr, n = paired(ours, peer) if pair else (None, 0)
    rows.append((label, "%s %s" % (fmt_num(o), unit), peer_label, "%s %s" % (fmt_num(p), unit) if p else "n/a",
                 fmt_ratio(ratio) + " rate" if ratio else "n/a", "",
                 "paired rounds %s (n=%d)" % (fmt_ratio(pr), n) if pr else ""))


peers_fresh = [
    ("botocore generate_db_auth_token", "boto_token"),
    ("@aws-sdk/rds-signer getAuthToken", "node_rds_signer"),
    ("Rust aws-sigv4 sign (floor)", "rust_sigv4"),
    ("Rust aws-sigv4 + apply_to_request_http1x", "rust_sigv4_http"),
    ("Rust kong_rds_iam::signer::sign (no Lua)", "rust_signer_fresh"),
    ("Rust kong_rds_iam Signer::sign, key cached (no Lua)", "rust_signer"),
]
for peer_label, peer in peers_fresh:
    time_row("fresh token, Lua rds.sign_token", "lua_sign_token", peer_label, peer)
for peer_label, peer in peers_fresh:
    time_row("fresh token, Lua rds.token() new user", "lua_token_fresh", peer_label, peer)
for peer_label, peer in peers_fresh[:3]:
    time_row("cached token, Lua rds.token()", "lua_token_cached", peer_label, peer)
for kind, label, peer_label, peer in (
        ("ec", "ElastiCache", "botocore SigV4QueryAuth (no SDK generator)", "boto_ec_token"),
        ("dsql", "DSQL", "botocore dsql generate_db_connect_admin_auth_token", "boto_dsql_token")):
    fn = "elasticache_token" if kind == "ec" else "dsql_token"
    time_row("fresh %s token, Lua rds.sign_token{kind}" % label, "lua_%s_sign_token" % kind, peer_label, peer)
    time_row("fresh %s token, Lua rds.%s() %s" % (label, fn, "new user" if kind == "ec" else "new host"),
             "lua_%s_token_fresh" % kind, peer_label, peer)
    time_row("cached %s token, Lua rds.%s()" % (label, fn), "lua_%s_token_cached" % kind, peer_label, peer)
rate_row("connect: TLS1.2 + SCRAM + select 1 + close", "lua_connect_pw", "libpq pgbench -C", "pg_connect_pw", "conn/s")
rate_row("connect: TLS1.2 + IAM token (emulator PAM) + select 1 + close", "lua_connect_iam",
         "libpq pgbench -C (password, context)", "pg_connect_pw", "conn/s", pair=False)
rate_row("round trip: select 1 on open TLS conn", "lua_query", "libpq pgbench -M simple", "pg_query", "q/s")
rate_row("decode: 10,000 rows x 6 cols into Lua tables", "lua_decode_rows_per_s",
         "libpq pgbench (PGresult, no conversion; context)", "pg_decode_rows_per_s", "rows/s", pair=False)


def target(label, value, ok, detail):
    return (label, detail, "n/a" if value is None else ("MET" if ok else "MISSED"))


targets = []
for ours, label in (("lua_sign_token", "fresh token (sign_token) <= 0.5x aws-sigv4 loop time"),
                    ("lua_token_fresh", "fresh token (token(), new user) <= 0.5x aws-sigv4 loop time")):
    o, p = med(ours), med("rust_sigv4")
    r = o / p if o and p else None
    oc, pc = med(ours + "_cpu"), med("rust_sigv4_cpu")
    rc = oc / pc if oc and pc else None
    targets.append(target(label, r, r is not None and r <= 0.5,
                          "%s vs %s = %s (CPU time: %s)" % (fmt_time_ns(o), fmt_time_ns(p), fmt_ratio(r) if r else "n/a",
                                                         fmt_ratio(rc) if rc else "n/a")))
o, p = med("lua_token_cached"), med("boto_token")
r = p / o if o and p else None
oc, pc = med("lua_token_cached_cpu"), med("boto_token_cpu")
rc = pc / oc if oc and pc else None
targets.append(target("cached token >= 300x faster than botocore", r, r is not None and r >= 300,
                      "%s vs %s = %s faster (CPU time: %s)" % (fmt_time_ns(o), fmt_time_ns(p), fmt_ratio(r) if r else "n/a",
                                                             fmt_ratio(rc) if rc else "n/a")))
for ours, peer, label, unit in (("lua_connect_pw", "pg_connect_pw", "connect rate >= 0.9x libpq", "conn/s"),
                                ("lua_query", "pg_query", "round trip rate >= 0.9x libpq", "q/s")):
    # Status from the median of round-by-round ratios (each of our rounds ran right before libpq's, so
    # a machine-wide change of state, e.g. other work starting or stopping, hits both); the ratio of the
    # two medians is shown next to it and a disagreement is flagged.
    o, p = med(ours), med(peer)
    r = o / p if o and p else None
    pr, n = paired(ours, peer)
    basis = pr if pr is not None else r
    if r is not None and pr is not None and (r >= 0.9) != (pr >= 0.9):
        label += " [ratio of medians disagrees]"
    targets.append(target(label, basis, basis is not None and basis >= 0.9,
                          "paired rounds %s (n=%d); medians %s vs %s %s = %s" % (
                              fmt_ratio(pr) if pr else "n/a", n, fmt_num(o), fmt_num(p), unit,
                              fmt_ratio(r) if r else "n/a")))

# Memory
mem = OrderedDict()
if "mem_rss_after_require" in samples:
    g = lambda k: med("mem_" + k)
    n_tok, n_conn = int(g("n_tokens") or 0), int(g("n_connects") or 0)
    mem["LuaJIT process before require"] = "%d KiB" % g("rss_before_require")
    mem["after require \"kong_rds_iam\""] = "%d KiB (+%d KiB)" % (g("rss_after_require"),
                                                              g("rss_after_require") - g("rss_before_require"))
    mem["after first token() (runtime, credentials) + 1,000 calls"] = "%d KiB" % g("rss_token_warm")
    mem["growth over %s cached token() calls" % "{:,}".format(n_tok)] = "%+d KiB" % (
        g("rss_token_cached_after") - g("rss_token_warm"))
    mem["growth over %s token() calls, each a new user (cache cap 1,024)" % "{:,}".format(n_tok)] = "%+d KiB" % (
        g("rss_token_fresh_after") - g("rss_token_fresh_warm"))
    mem["after 100 warm-up connect/close"] = "%d KiB" % g("rss_connect_warm")
    mem["growth over %s connect/select 1/close cycles" % "{:,}".format(n_conn)] = "%+d KiB" % (
        g("rss_connect_after") - g("rss_connect_warm"))
    mem["final RSS"] = "%d KiB" % g("rss_connect_after")

# Absolute medians of everything
abs_rows = []
units = {"lua_connect_pw": "conn/s", "lua_connect_iam": "conn/s", "pg_connect_pw": "conn/s",
         "pg_connect_ms": "ms (pgbench avg connection time)", "lua_query": "q/s", "pg_query": "q/s",
         "lua_decode_rows_per_s": "rows/s", "pg_decode_rows_per_s": "rows/s",
         "lua_decode_server_only_ms": "ms (select count(*) over the same scan)"}
for name, vals in samples.items():
    if name.startswith(("mem_", "ngx_")):  # ngx_: the nginx section has its own tables
        continue
    unit = units.get(name, "ns/op (process CPU)" if name.endswith("_cpu") else "ns/op")
    abs_rows.append((name, fmt_num(statistics.median(vals)), unit, spread(name)))
abs_rows = [r for r in abs_rows if r[0] != "check_identical"]
if "check_identical" in samples:
    abs_rows.append(("Rust token variants byte-identical", "yes" if min(samples["check_identical"]) == 1 else "NO",
                     "", ""))


def md_table(header, body):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for r in body:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)


def text_table(header, body):
    cols = list(zip(*([header] + [tuple(str(c) for c in r) for r in body])))
    w = [max(len(c) for c in col) for col in cols]
    line = lambda r: "  ".join(str(c).ljust(w[i]) for i, c in enumerate(r))
    return "\n".join([line(header), line(["-" * x for x in w])] + [line(r) for r in body])


H = ("measurement", "ours (median)", "peer", "peer (median)", "ours/peer", "speed", "cross-check")
TH = ("target", "measured", "status")

print()
print(text_table(H, rows))
print()
print(text_table(TH, targets))
if mem:
    print()
    print(text_table(("memory (VmRSS)", "value"), list(mem.items())))
print()
if nginx_md:
    print(nginx_text)

m = meta
md = []
md.append("# kong_rds_iam benchmark results")
md.append("")
md.append("Generated by `bench/run`%s on %s. Medians over all rounds; ratios are computed from medians "
          "taken in the same run (peers interleaved round by round with ours)."
          % (" (BENCH_QUICK=1 smoke run: few, short rounds)" if m.get("meta_quick") == "1" else "",
             m.get("meta_date", "?")))
md.append("")
md.append("## Machine and versions")
md.append("")
md.append(md_table(("item", "value"), [
    ("CPU", m.get("meta_cpu", "?")),
    ("cores (nproc)", m.get("meta_nproc", "?")),
    ("memory", m.get("meta_mem", "?")),
    ("kernel", m.get("meta_kernel", "?")),
    ("load average at start / end", "%s / %s" % (m.get("meta_load_start", "?"), m.get("meta_load_end", "?"))),
    ("kong_rds_iam", m.get("meta_module", "?")),
    ("LuaJIT", m.get("version_luajit", "?")),
    ("rustc", m.get("version_rustc", "?")),
    ("aws-sigv4 (bench/rust)", m.get("version_aws_sigv4", "?")),
    ("botocore / Python", "%s / %s" % (m.get("version_botocore", "?"), m.get("version_python", "?"))),
    ("node / @aws-sdk/rds-signer", "%s / %s" % (m.get("version_node", "?"), m.get("version_rds_signer", "?"))),
    ("PostgreSQL server (emulator) / pgbench", "%s / %s" % (m.get("version_postgres", "?"),
                                                           m.get("version_pgbench", "?"))),
    ("rounds", m.get("meta_rounds", "?")),
]))
md.append("")
md.append("## Targets")
md.append("")
md.append(md_table(TH, targets))
md.append("")
md.append("## Ours vs peers")
md.append("")
md.append("Times are per token (wall clock); `ours/peer` below 1 (time) or above 1 (rate) favours kong_rds_iam. "
          "Cross-check: for tokens the same ratio from process CPU time per token (other load on the machine "
          "disturbs it less than wall time); for rates the median of round-by-round ratios (each of our rounds "
          "ran right before the peer's).")
md.append("")
md.append(md_table(H, rows))
md.append("")
if mem:
    md.append("## Memory (VmRSS of one LuaJIT process)")
    md.append("")
    md.append(md_table(("stage", "value"), list(mem.items())))
    md.append("")
md.append("## All medians (min-max over rounds)")
md.append("")
md.append(md_table(("series", "median", "unit", "min-max"), abs_rows))
md.append("")
md.append("## How each number is taken")
md.append("")
md.append("""- Tokens: host `bench-db.abc123.us-east-1.rds.amazonaws.com`, port 5432, user `iam_user`,
  region us-east-1, the same access key and secret everywhere, current time, no session token.
  `lua_sign_token`: `rds.sign_token{...}` (fresh signature, signing key derived each call, like the peers).
  `lua_token_fresh`: `rds.token(conf)` with a user never seen before on every call (token cache miss; the
  day's signing key is cached; LuaJIT, so through the FFI route). `lua_token_cached`: `rds.token(conf)` with one conf. botocore: one client,
  `generate_db_auth_token` in a loop. rds-signer: one `Signer`, `await getAuthToken()` in a loop. Rust: `bench/rust`
  (aws-sigv4 `http_request::sign`, `SignatureLocation::QueryParams`, `expires_in` 900 s, service `rds-db`, token
  string assembled from the returned params; it checks that all Rust variants produce byte-identical tokens).
- ElastiCache / DSQL tokens: `rds.sign_token{kind = "elasticache", cache_name = "bench-cache", user = "iam_user",
  region = "us-east-1", ...}` and `{kind = "dsql", host = "benchabcdefghijklmnopqrstu.dsql.us-east-1.on.aws",
  admin = true, ...}` (fresh signatures); `rds.elasticache_token{...}` with a user never seen before (cache miss),
  `rds.dsql_token{...}` with a host never seen before (cache miss), and both with one argument table (cache hit).
  botocore: ElastiCache has no SDK generator, so `SigV4QueryAuth(credentials, "elasticache", region, 900)` on an
  `AWSRequest` for `GET http://bench-cache/?Action=connect&User=iam_user` (one credentials object); DSQL: one
  `dsql` client, `generate_db_connect_admin_auth_token` in a loop.
- connect: one Lua process loops `rds.connect` (pg_ssl, pg_ssl_required, TLS 1.2, SCRAM-SHA-256 user
  `pw_scram`) + `select 1` + `close` for a fixed time; libpq: `pgbench -C -n -c 1 -T S -f select1.sql`,
  sslmode=require, gssencmode=disable, same user/password (tps including reconnection).
  IAM: same loop with `pg_iam_auth` (token cached; each login runs the emulator's Python verifier).
- round trip: one open TLS connection, `conn:query("select 1")` in a loop vs `pgbench -n -M simple -c 1 -T S`
  with a `select 1;` script.
- decode: `select id, name, flag, score, created, doc from bench_rows order by id` (10,000 rows: int4, text,
  bool, float8, timestamptz, jsonb) into pgmoon-shaped Lua tables (jsonb decoded to tables); wall time of
  `conn:query`. libpq context: the same query through pgbench (rows land in a PGresult as text, no conversion).
- memory: VmRSS from /proc/self/status after a full GC, one LuaJIT process.
- Rate targets (connect, round trip) are judged on the median of round-by-round ratios: our round and
  libpq's run back to back, so a change in the machine's state hits both. On this shared 2-core VM the
  `select 1` round trip of both clients has been seen to jump between two levels (roughly 8k and 25-30k q/s) with the state
  of the machine, which makes the ratio of the two overall medians swing; the table shows both.
- Token peers run one after another in each pass (LuaJIT, botocore, rds-signer, Rust), passes repeated;
  the CPU-time column uses CLOCK_PROCESS_CPUTIME_ID / process_time / process.cpuUsage.
""")
if nginx_md:
    md.append(nginx_md)
    md.append("")
with open(md_path, "w") as f:
    f.write("\n".join(md))
print("wrote", md_path)
