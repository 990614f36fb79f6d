"""The nginx section (issue 9: non-blocking connect()/query()) of bench/report.py.

section(samples, meta) -> (text for the terminal, markdown section or None)
splice(md_path, md)    replaces the section between the markers in an
                       existing results.md (or appends it)

Reads the `ngx_*` series that bench/nginx/drive.py writes: per cell tag
`CELL_nN` (CELL: yield_tls, block_tls, yield_plain, block_plain, pgmoon;
N: concurrent clients) one value per round of ngx_qps_, ngx_rps_, ngx_p50_,
ngx_p99_ (per query, us, measured in the handler), ngx_req_p50_/ngx_req_p99_
(per request, ms, at the client), ngx_iothread_ (1/0), ngx_jobs_left_,
ngx_cpu_us_per_q_, ngx_cs_per_q_, with ngx_round_ giving the round of each; ngx_nop_{yield,block} (median us of rds._nop()).
The connect + query + keepalive cycle: ngx_cyc_{rps,p50,p99,req_p50,req_p99,new,iothread,jobs_left,cpu_us,user_us,kernel_us,cs,mcpu_us}_CELL_nN
with ngx_cyc_round_ (CELL: yield_tls, yield_plain, block_plain, pgmoon). The 10,000-row decode:
ngx_dec_{rows_per_s,ms,min_ms,req_ms,cpu_ms,cs,mcpu_ms}_CELL with ngx_dec_round_, one value per round (the
round's median over its requests). Instructions per cycle (callgrind, once per run):
ngx_{ir,i1mr,d1m}_CELL (CELL: empty, yield_plain, pgmoon, yield_tls, pgmoon_tls).
Standard library only.
"""
import math
import re
import statistics

BEGIN = "<!-- bench/nginx: begin -->"
END = "<!-- bench/nginx: end -->"

LABEL = {
    "yield_tls": "kong_rds_iam yielding, TLS",
    "block_tls": "kong_rds_iam blocking, TLS",
    "yield_plain": "kong_rds_iam yielding, no TLS",
    "block_plain": "kong_rds_iam blocking, no TLS",
    "pgmoon": "pgmoon (cosockets), no TLS",
}
ORDER = list(LABEL)

# (numerator, denominator, label)
RATIOS = [
    ("yield_tls", "block_tls", "yielding / blocking, TLS"),
    ("yield_plain", "block_plain", "yielding / blocking, no TLS"),
    ("yield_plain", "pgmoon", "yielding no TLS / pgmoon"),
    ("yield_tls", "pgmoon", "yielding TLS / pgmoon (no TLS)"),
    ("block_plain", "pgmoon", "blocking no TLS / pgmoon"),
]


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


def fmt_ratio(r):
    return "n/a" if r is None else "%.2fx" % r


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


CYC_LABEL = {
    "yield_tls": "kong_rds_iam yielding, TLS",
    "yield_plain": "kong_rds_iam yielding, no TLS",
    "block_plain": "kong_rds_iam blocking, no TLS",
    "pgmoon": "pgmoon (cosockets), no TLS",
    "pgmoon_tls": "pgmoon (cosockets), TLS",
    "class_plain": "kong_rds_iam.pgmoon (Kong's driver with its requires changed), no TLS",
}
DEC_LABEL = dict(CYC_LABEL, libpq="libpq (psql, no Lua tables): server + transfer floor")
# (numerator, denominator, label) for the cycle and the decode
CYC_RATIOS = [
    ("yield_plain", "pgmoon", "yielding no TLS / pgmoon"),
    ("class_plain", "pgmoon", "kong_rds_iam.pgmoon / pgmoon, no TLS"),
    ("yield_tls", "pgmoon_tls", "yielding TLS / pgmoon TLS"),
    ("yield_tls", "pgmoon", "yielding TLS / pgmoon (no TLS)"),
    ("block_plain", "pgmoon", "blocking no TLS / pgmoon"),
    ("yield_plain", "block_plain", "yielding / blocking, no TLS"),
]
DEC_RATIOS = [r for r in CYC_RATIOS if r[0] != "class_plain"]


def judge(label, pr, cnt, rm, goal, detail, why_not=None):
    if pr is None:
        status = "n/a"
    elif why_not:
        status = why_not
    else:
        status = "MET" if pr >= goal else "MISSED"
        if rm is not None and (rm >= goal) != (pr >= goal):
            label += " [ratio of medians disagrees]"
    return (label, detail, status)


def cycle_part(samples, meta):
    """The connect + `select 1` + keepalive cycle: (text, md lines, targets)."""
    if not any(k.startswith("ngx_cyc_rps_") for k in samples):
        return "", [], []

    def med(name):
        v = samples.get(name)
        return statistics.median(v) if v else None

    ns = sorted({int(m.group(1)) for k in samples for m in [re.match(r"ngx_cyc_rps_.*_n(\d+)$", k)] if m})
    cells = [c for c in CYC_LABEL if any(("ngx_cyc_rps_%s_n%d" % (c, n)) in samples for n in ns)]

    def paired(a, b, n):
        ta, tb = "%s_n%d" % (a, n), "%s_n%d" % (b, n)
        return _paired(samples, "ngx_cyc_round_", "ngx_cyc_rps_", ta, tb)

    def rmed(a, b, n):
        x, y = med("ngx_cyc_rps_%s_n%d" % (a, n)), med("ngx_cyc_rps_%s_n%d" % (b, n))
        return x / y if x and y else None

    # Path check: our yielding cells ran where the I/O thread started (a worker that yields), blocking ones
    # without. (pgmoon's instances never start it: pgmoon does not use the module.)
    iot_y = [x for k, v in samples.items() if k.startswith("ngx_cyc_iothread_yield_") for x in v]
    iot_b = [x for k, v in samples.items() if k.startswith("ngx_cyc_iothread_block_") for x in v]
    why_not = None
    if iot_y and min(iot_y) < 1:
        why_not = "not measured: the yielding instance ran without the I/O thread"
    elif iot_b and max(iot_b) > 0:
        why_not = "not measured: the blocking instance started the I/O thread"

    rows = []
    for n in ns:
        for c in cells:
            tag = "%s_n%d" % (c, n)
            if ("ngx_cyc_rps_" + tag) not in samples:
                continue
            io = samples.get("ngx_cyc_iothread_" + tag) or []
            left = samples.get("ngx_cyc_jobs_left_" + tag) or []
            new = samples.get("ngx_cyc_new_" + tag) or []
            errs = sum(samples.get("ngx_cyc_err_" + tag) or [])
            cpu, cs, mcpu = med("ngx_cyc_cpu_us_" + tag), med("ngx_cyc_cs_" + tag), med("ngx_cyc_mcpu_us_" + tag)
            ucpu, kcpu = med("ngx_cyc_user_us_" + tag), med("ngx_cyc_kernel_us_" + tag)
            ccpu = med("ngx_cyc_client_cpu_us_" + tag)
            vals = samples["ngx_cyc_rps_" + tag]
            rows.append((n, CYC_LABEL[c], fmt_num(med("ngx_cyc_rps_" + tag)),
                         "%s us" % fmt_num(med("ngx_cyc_p50_" + tag)), "%s us" % fmt_num(med("ngx_cyc_p99_" + tag)),
                         "%s ms" % fmt_num(med("ngx_cyc_req_p50_" + tag)), "%s ms" % fmt_num(med("ngx_cyc_req_p99_" + tag)),
                         "%d" % max(new) if new else "n/a",
                         ("yes" if min(io) >= 1 else ("no" if max(io) < 1 else "mixed")) if io else "n/a",
                         "%d" % max(left) if left else "n/a",
                         "n/a" if cpu is None else "%s us" % fmt_num(cpu),
                         "n/a" if ucpu is None else "%s / %s us" % (fmt_num(ucpu), fmt_num(kcpu)),
                         "n/a" if cs is None else "%.2f" % cs,
                         "n/a" if mcpu is None else "%s us" % fmt_num(mcpu),
                         "n/a" if ccpu is None else "%s us" % fmt_num(ccpu),
                         "%s-%s (n=%d)%s" % (fmt_num(min(vals)), fmt_num(max(vals)), len(vals),
                                             (", %d errors" % errs) if errs else "")))
    RH = ("N", "path", "requests/s", "cycle p50 (handler)", "cycle p99 (handler)", "request p50 (client)",
          "request p99 (client)", "new connections in window", "I/O thread", "jobs left", "worker CPU/request",
          "of it user / kernel", "ctx switches/request", "machine CPU/request", "load generator CPU/request",
          "requests/s min-max (rounds)")

    ratio_rows = []
    for n in ns:
        for a, b, label in CYC_RATIOS:
            if a not in cells or b not in cells:
                continue
            pr, cnt = paired(a, b, n)
            rm = rmed(a, b, n)
            if pr is None and rm is None:
                continue
            pa, pb = med("ngx_cyc_p50_%s_n%d" % (a, n)), med("ngx_cyc_p50_%s_n%d" % (b, n))
            lo, hi, above = _interval(samples, "ngx_cyc_round_", "ngx_cyc_rps_", "%s_n%d" % (a, n), "%s_n%d" % (b, n))
            ratio_rows.append((n, label, "%s (n=%d)" % (fmt_ratio(pr), cnt),
                               "%s-%s" % (fmt_ratio(lo), fmt_ratio(hi)) if lo else "n/a",
                               "%d of %d" % above if above else "n/a", fmt_ratio(rm),
                               fmt_ratio(pa / pb if pa and pb else None)))
    QH = ("N", "requests/s ratio", "paired rounds", "95% interval", "rounds at or above 1.0x", "ratio of medians",
          "cycle p50 time ratio")

    targets = []
    for n in ns:
        # TLS against pgmoon over TLS when it ran (like for like), else plain pgmoon.
        peer_tls = "pgmoon_tls" if "pgmoon_tls" in cells else "pgmoon"
        for a, tls, peer in (("yield_plain", "no TLS", "pgmoon"), ("yield_tls", "TLS", peer_tls),
                             ("class_plain", "no TLS", "pgmoon")):
            label = "cycle connect+query+keepalive, %s (%s) >= 1.0x %s, N=%d" % (
                "kong_rds_iam.pgmoon" if a == "class_plain" else "yielding", tls,
                "pgmoon (TLS)" if peer == "pgmoon_tls" else "pgmoon", n)
            if peer not in cells:
                targets.append((label, "pgmoon not present", "n/a"))
                continue
            if a not in cells:
                continue
            pr, cnt = paired(a, peer, n)
            rm = rmed(a, peer, n)
            lo, hi, _ = _interval(samples, "ngx_cyc_round_", "ngx_cyc_rps_", "%s_n%d" % (a, n), "%s_n%d" % (peer, n))
            detail = "paired rounds %s (n=%d, 95%% interval %s); medians %s vs %s requests/s = %s" % (
                fmt_ratio(pr), cnt, "%s-%s" % (fmt_ratio(lo), fmt_ratio(hi)) if lo else "n/a",
                fmt_num(med("ngx_cyc_rps_%s_n%d" % (a, n))), fmt_num(med("ngx_cyc_rps_%s_n%d" % (peer, n))),
                fmt_ratio(rm))
            targets.append(judge(label, pr, cnt, rm, 1.0, detail, why_not))
    # What a driver can change at all: the worker's user-space time is where
    # the drivers differ (their system calls are the same); the rest of a
    # request's CPU (the worker's kernel time, PostgreSQL, the load
    # generator, the loopback) is common to both.
    for n, ours in ((n, c) for n in ns for c in ("yield_plain", "class_plain")):
        a, b = "%s_n%d" % (ours, n), "pgmoon_n%d" % n
        pu, cnt = _paired(samples, "ngx_cyc_round_", "ngx_cyc_user_us_", a, b)
        if pu is None:
            continue
        ua, ub = med("ngx_cyc_user_us_" + a), med("ngx_cyc_user_us_" + b)
        ka, kb = med("ngx_cyc_kernel_us_" + a), med("ngx_cyc_kernel_us_" + b)
        ma, mb = med("ngx_cyc_mcpu_us_" + a), med("ngx_cyc_mcpu_us_" + b)
        share = ub / mb if ub and mb else None
        targets.append((
            "cycle worker user-space CPU per request, %s (no TLS) / pgmoon, N=%d (no target)" % (
                "kong_rds_iam.pgmoon" if ours == "class_plain" else "yielding", n),
            "paired rounds %s (n=%d); user %s vs %s us, kernel %s vs %s us, machine %s vs %s us per request; "
            "pgmoon's whole user-space time is %s of the machine's CPU per request" % (
                fmt_ratio(pu), cnt, fmt_num(ua), fmt_num(ub), fmt_num(ka), fmt_num(kb), fmt_num(ma), fmt_num(mb),
                "n/a" if share is None else "%.0f%%" % (100 * share)),
            "context"))
    TH = ("target", "measured", "status")

    text = "\n".join(["connect + select 1 + keepalive cycle: %s" % meta.get("meta_ngx_cyc_rounds", "?"), "",
                      text_table(RH, rows), "", text_table(QH, ratio_rows), "", text_table(TH, targets), ""])
    md = ["### Connect + query + keepalive cycle", "",
          "Each request: `rds.connect(conf)` (an idle connection from the module's per-worker pool after the "
          "warm-up), one `select 1 as x`, `conn:keepalive()`. pgmoon and kong_rds_iam.pgmoon (this module under "
          "pgmoon's API, the driver Kong runs on once its two requires name it), with the same options table for "
          "every request, as Kong's connector does per query: `new(opts)`, `convert_null = true`, `NULL = "
          "ngx.null`, `settimeout(5000)`, `connect()` (pgmoon: a socket from the cosocket keepalive pool), "
          "`sock:getreusedtimes()`, `query`, `keepalive(60000, 128)`. %s. Each path runs in an nginx instance of "
          "its own (one worker), as one driver does in a production worker: LuaJIT forms its traces along the "
          "first hot path, and a second path through the same driver code in the same worker then runs partly on "
          "side exits (callgrind counted 12-19%% more instructions for a path measured second). The paths of one N take turns within one window, each for a slice of "
          "`--cyc-slice` (0.25 s) at a time, in the order ABCD DCBA ABCD ... (reversed in even rounds), until each "
          "has had its seconds; a slice ends at a barrier (the next path starts when the last answer of this one "
          "is in), and each path's requests, time and CPU are summed over its slices. The differences here are a "
          "few percent, and the machine's state was seen to move a path's rate by up to 2x between cells run a few "
          "seconds apart: slices a fraction of a second long let every path meet the same states (`drive.py` "
          "`load_slices`). All the paths' pools stay open through the window (the emulator runs with "
          "max_connections 400 for that). Load: one Python thread driving N keep-alive connections through epoll "
          "(the K-query cells' `http.client` threads cost several times more CPU per request, and on 2 cores that "
          "would cap these short requests). The cycle is timed in the handler from before connect to after keepalive (at N = 50 this "
          "includes waiting for the worker while the other requests run), per path; request times at the client. \"new "
          "connections in window\": cycles that got a new physical connection (`getreusedtimes() == 0`) during "
          "the measured window (the largest over rounds; 0: every cycle reused a pooled one). Worker and machine "
          "CPU per request: over the path's slices (`/proc/PID/task/*/schedstat`, `/proc/stat`); the worker's "
          "split into user space and kernel from `/proc/PID/task/*/stat` (clock ticks of 10 ms, summed over the "
          "slices: a few percent either way per round). The drivers make the same system calls, so their "
          "difference is in user space; the kernel's part, PostgreSQL, the load generator and the loopback are "
          "common to both, which bounds how far a driver can move requests/s here (the context row)." % (
              meta.get("meta_ngx_cyc_rounds", "?")), "",
          md_table(TH, targets), "", md_table(RH, rows), "",
          "Ratios: the median of round-by-round requests/s ratios (one interleaved window per N and round, right "
          "after that N's query cells), the 95% interval of their geometric mean (exp(mean +- 2 standard errors) "
          "of the log ratios), how many rounds came out at or above 1.0x, and the ratio of the medians; the last "
          "column compares cycle p50 times (below 1 favours the first path).", "", md_table(QH, ratio_rows), ""]
    return text, md, targets


IR_LABEL = {
    "empty": "an empty content_by_lua request (the HTTP floor)",
    "yield_plain": CYC_LABEL["yield_plain"],
    "pgmoon": CYC_LABEL["pgmoon"],
    "yield_tls": CYC_LABEL["yield_tls"],
    "pgmoon_tls": CYC_LABEL["pgmoon_tls"],
    "class_plain": CYC_LABEL["class_plain"],
}


def ir_part(samples, meta):
    """Instructions per cycle request under callgrind: (text, md lines, context targets)."""
    got = {c: samples["ngx_ir_" + c][0] for c in IR_LABEL if samples.get("ngx_ir_" + c)}
    if not got:
        why = meta.get("meta_ngx_ir")
        return "", (["### Instructions per cycle (callgrind)", "", "Not measured: %s." % why, ""] if why else []), []
    floor = got.get("empty")

    def one(c, key):
        v = samples.get(key + c)
        return v[0] if v else None

    rows = []
    for c in IR_LABEL:
        if c not in got:
            continue
        above = got[c] - floor if floor is not None and c != "empty" else None
        rows.append((IR_LABEL[c], fmt_num(got[c]), "n/a" if above is None else fmt_num(above),
                     fmt_num(one(c, "ngx_i1mr_")), fmt_num(one(c, "ngx_d1m_"))))
    H = ("path", "instructions/request", "above the empty request", "L1 instruction misses/request",
         "L1 data misses/request")
    targets = []
    for a, b, tls in (("yield_plain", "pgmoon", "no TLS"), ("yield_tls", "pgmoon_tls", "TLS")):
        if a in got and b in got:
            r_all = got[a] / got[b]
            r_above = (got[a] - floor) / (got[b] - floor) if floor is not None else None
            targets.append(("cycle instructions per request (callgrind), yielding / pgmoon, %s (no target)" % tls,
                            "%s (above the empty request: %s)" % (fmt_ratio(r_all), fmt_ratio(r_above)), "context"))
    text = "\n".join(["instructions per cycle request (callgrind): %s" % meta.get("meta_ngx_ir", "?"), "",
                      text_table(H, rows), ""])
    md = ["### Instructions per cycle (callgrind)", "",
          "The same cycle requests counted instead of timed: for each path an nginx process of its own "
          "(master_process off) under valgrind's callgrind with its cache simulation, the path served "
          "sequentially on one keep-alive connection, %s. A process per path, since one that ran another path "
          "through the same driver first counts 12-19%% more (LuaJIT's traces follow the first hot path). Per "
          "request: instructions executed in user space by the whole process (nginx, ngx_lua, "
          "LuaJIT and its traces, libc, the module and its I/O thread), and first-level cache misses of "
          "callgrind's simulated caches. The kernel's part (the same system calls for both drivers, checked with "
          "strace: one send and one receive per query, one epoll wait) is not in it. Other load on the machine "
          "does not change these counts; between runs by hand they moved by about 2%% for ours and up to 15%% for "
          "pgmoon (where its garbage collection and JIT traces fall), against 2x swings of single wall-clock "
          "rounds. \"above the empty request\": minus an empty `content_by_lua` request, which leaves the "
          "driver's work and the bench handler's." % meta.get("meta_ngx_ir", "?"), "", md_table(H, rows), ""]
    return text, md, targets


def _interval(samples, round_prefix, val_prefix, ta, tb):
    """The 95% interval of the geometric mean of the paired round ratios
    (exp(mean +- 2 SE) of their logs) and (rounds at or above 1.0, rounds);
    None, None, None with fewer than 3 rounds."""
    rs = [x for x in _round_ratios(samples, round_prefix, val_prefix, ta, tb) if x > 0]
    if len(rs) < 3:
        return None, None, None
    logs = [math.log(x) for x in rs]
    m, se = statistics.mean(logs), statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(m - 2 * se), math.exp(m + 2 * se), (sum(1 for x in rs if x >= 1.0), len(rs))


def _round_ratios(samples, round_prefix, val_prefix, ta, tb):
    """ta's value / tb's value, round by round, over the rounds both ran."""
    ra = dict(zip(samples.get(round_prefix + ta) or [], samples.get(val_prefix + ta) or []))
    rb = dict(zip(samples.get(round_prefix + tb) or [], samples.get(val_prefix + tb) or []))
    return [ra[r] / rb[r] for r in sorted(set(ra) & set(rb)) if rb[r]]


def _paired(samples, round_prefix, val_prefix, ta, tb):
    rs = _round_ratios(samples, round_prefix, val_prefix, ta, tb)
    return (statistics.median(rs), len(rs)) if rs else (None, 0)


def decode_part(samples, meta):
    """The 10,000-row decode: (text, md lines, targets)."""
    if not any(k.startswith("ngx_dec_rows_per_s_") for k in samples):
        return "", [], []

    def med(name):
        v = samples.get(name)
        return statistics.median(v) if v else None

    cells = [c for c in DEC_LABEL if ("ngx_dec_rows_per_s_" + c) in samples]

    def paired(a, b):
        return _paired(samples, "ngx_dec_round_", "ngx_dec_rows_per_s_", a, b)

    def rmed(a, b):
        x, y = med("ngx_dec_rows_per_s_" + a), med("ngx_dec_rows_per_s_" + b)
        return x / y if x and y else None

    def above_floor(c):
        """Median over rounds of (this path's query time - libpq's), ms."""
        ra = dict(zip(samples.get("ngx_dec_round_" + c) or [], samples.get("ngx_dec_ms_" + c) or []))
        rb = dict(zip(samples.get("ngx_dec_round_libpq") or [], samples.get("ngx_dec_ms_libpq") or []))
        d = [ra[r] - rb[r] for r in sorted(set(ra) & set(rb))]
        return statistics.median(d) if d else None

    rows = []
    for c in cells:
        vals = samples["ngx_dec_rows_per_s_" + c]
        errs = sum(samples.get("ngx_dec_err_" + c) or [])
        cpu, cs, mcpu = med("ngx_dec_cpu_ms_" + c), med("ngx_dec_cs_" + c), med("ngx_dec_mcpu_ms_" + c)
        af = above_floor(c) if c != "libpq" else None
        rows.append((DEC_LABEL[c], fmt_num(med("ngx_dec_rows_per_s_" + c)), "%s ms" % fmt_num(med("ngx_dec_ms_" + c)),
                     "%s ms" % fmt_num(min(samples.get("ngx_dec_min_ms_" + c) or [0])),
                     "n/a" if af is None else "%s ms" % fmt_num(af),
                     "n/a" if med("ngx_dec_req_ms_" + c) is None else "%s ms" % fmt_num(med("ngx_dec_req_ms_" + c)),
                     "n/a" if cpu is None else "%s ms" % fmt_num(cpu), "n/a" if cs is None else "%.0f" % cs,
                     "n/a" if mcpu is None else "%s ms" % fmt_num(mcpu),
                     "%s-%s (n=%d)%s" % (fmt_num(min(vals)), fmt_num(max(vals)), len(vals),
                                         (", %d errors" % errs) if errs else "")))
    RH = ("path", "rows/s", "query() time", "fastest query()", "above the libpq floor", "request (client)",
          "worker CPU/request",
          "ctx switches/request", "machine CPU/request", "rows/s min-max (rounds)")

    ratio_rows = []
    for a, b, label in DEC_RATIOS:
        if a not in cells or b not in cells:
            continue
        pr, cnt = paired(a, b)
        ca, cb = med("ngx_dec_cpu_ms_" + a), med("ngx_dec_cpu_ms_" + b)
        fa, fb = above_floor(a), above_floor(b)
        ma, mb = samples.get("ngx_dec_min_ms_" + a), samples.get("ngx_dec_min_ms_" + b)
        ratio_rows.append((label, "%s (n=%d)" % (fmt_ratio(pr), cnt), fmt_ratio(rmed(a, b)),
                           fmt_ratio(min(mb) / min(ma) if ma and mb else None),
                           fmt_ratio(ca / cb if ca and cb else None),
                           fmt_ratio(fb / fa if fa and fb and fa > 0 and fb > 0 else None)))
    QH = ("rows/s ratio", "paired rounds", "ratio of medians", "fastest query() ratio", "worker CPU/request ratio",
          "time above the floor, second / first (above 1 favours the first)")

    targets = []
    for a, tls in (("yield_plain", "no TLS"), ("yield_tls", "TLS")):
        label = "decode 10,000 rows, yielding (%s) >= 2x pgmoon" % tls
        if "pgmoon" not in cells:
            targets.append((label, "pgmoon not present", "n/a"))
            continue
        if a not in cells:
            continue
        pr, cnt = paired(a, "pgmoon")
        rm = rmed(a, "pgmoon")
        detail = "paired rounds %s (n=%d); medians %s vs %s rows/s = %s" % (
            fmt_ratio(pr), cnt, fmt_num(med("ngx_dec_rows_per_s_" + a)), fmt_num(med("ngx_dec_rows_per_s_pgmoon")),
            fmt_ratio(rm))
        targets.append(judge(label, pr, cnt, rm, 2.0, detail))
    if "libpq" in cells and "pgmoon" in cells:
        ceil, cnt = paired("pgmoon", "libpq")
        ceil = 1 / ceil if ceil else None
        targets.append(("decode: the most any client could reach against pgmoon here (no target)",
                        "pgmoon query time / libpq floor = %s (paired rounds, n=%d): a decoder of zero cost" % (
                            fmt_ratio(ceil), cnt), "context"))
    TH = ("target", "measured", "status")

    text = "\n".join(["10,000-row decode: %s" % meta.get("meta_ngx_dec_rounds", "?"), "",
                      text_table(RH, rows), "", text_table(QH, ratio_rows), "", text_table(TH, targets), ""])
    md = ["### Decoding 10,000 rows into Lua tables", "",
          "One request at a time: `select id, big, name, flag, score, created from bench_rows_mixed order by id` "
          "(`bench/sql/rows_mixed.sql`: 10,000 rows of int4, int8, text (~40 bytes), bool, float8, timestamptz; "
          "about 1.2 MB of DataRow messages) on a pooled connection, decoded into an array of row tables keyed by column "
          "name (int4/int8/float8 numbers, bool booleans, text and timestamptz strings, in both drivers); the "
          "handler checks the row count and the types. %s; per round the median of its requests per path. "
          "query() time: `conn:query` / `pg:query` timed in the handler after a full `collectgarbage()` (the GC "
          "work the decode causes counts), so it includes the server's work and the transfer; rows/s = 10,000 / "
          "that. Worker CPU/request: all the worker's threads (ours: the I/O thread's reading and parsing too) "
          "over the whole request; machine CPU: all CPUs (PostgreSQL's sending included). The libpq row is the same "
          "query from `psql` (k+1 on one connection per round, the first dropped; `\\timing` stops before printing, "
          "which goes to /dev/null) over TCP without TLS as the same user: what the server and the loopback "
          "take with a C client that only keeps the rows in a PGresult; \"above the libpq floor\" is a path's "
          "query time minus that (median of per-round differences): the client's own decoding cost, roughly "
          "(ours reads and parses on the I/O thread while the server sends, then builds the tables)." % (
              meta.get("meta_ngx_dec_rounds", "?")), "",
          md_table(TH, targets), "", md_table(RH, rows), "",
          "Ratios: the median of round-by-round rows/s ratios (requests interleaved one by one across paths, the "
          "starting path rotating), the ratio of the medians, and the ratio of the fastest requests over the run "
          "(other load on the machine only ever adds time, so the fastest is the least disturbed); then worker CPU "
          "per request (below 1 favours the first path) and the time above the libpq floor.", "", md_table(QH, ratio_rows), ""]
    return text, md, targets


def section(samples, meta):
    if not any(k.startswith(("ngx_qps_", "ngx_cyc_rps_", "ngx_dec_rows_per_s_")) for k in samples):
        return "", None

    def med(name):
        v = samples.get(name)
        return statistics.median(v) if v else None

    ns = sorted({int(m.group(1)) for k in samples for m in [re.match(r"ngx_qps_.*_n(\d+)$", k)] if m})
    cells = [c for c in ORDER if any(("ngx_qps_%s_n%d" % (c, n)) in samples for n in ns)]

    def by_round(cell, n, what="qps"):
        rounds = samples.get("ngx_round_%s_n%d" % (cell, n)) or []
        vals = samples.get("ngx_%s_%s_n%d" % (what, cell, n)) or []
        return dict(zip(rounds, vals))

    def paired(a, b, n):
        ra, rb = by_round(a, n), by_round(b, n)
        common = sorted(set(ra) & set(rb))
        rs = [ra[r] / rb[r] for r in common if rb[r]]
        return (statistics.median(rs), len(rs)) if rs else (None, 0)

    def ratio_of_medians(a, b, n):
        x, y = med("ngx_qps_%s_n%d" % (a, n)), med("ngx_qps_%s_n%d" % (b, n))
        return x / y if x and y else None

    # The path check: every yielding cell ran with the module's I/O thread in
    # the worker, no blocking cell did (the thread starts at the first
    # yielding call, and only there).
    def iot(prefix):
        v = [x for k, vals in samples.items() if k.startswith("ngx_iothread_" + prefix) for x in vals]
        return v

    y, b = iot("yield_"), iot("block_")
    why_not = None
    if y and min(y) < 1:
        why_not = ("not measured: the yielding instance ran without the I/O thread in %d of %d cells "
                   "(rds._nop %s): no yielding path in this build?" % (
                       sum(1 for x in y if x < 1), len(y),
                       "present" if meta.get("meta_ngx_yield_has_nop") == "yes" else "missing"))
    elif b and max(b) > 0:
        why_not = "not measured: the blocking instance started the I/O thread (KONG_RDS_IAM_YIELD=off not applied?)"

    targets = []

    def target(label, a, b, n, goal):
        pr, cnt = paired(a, b, n)
        rm = ratio_of_medians(a, b, n)
        detail = "paired rounds %s (n=%d); medians %s vs %s q/s = %s" % (
            fmt_ratio(pr), cnt, fmt_num(med("ngx_qps_%s_n%d" % (a, n))), fmt_num(med("ngx_qps_%s_n%d" % (b, n))),
            fmt_ratio(rm))
        if pr is None:
            status = "n/a"
        elif why_not:
            status = why_not
        else:
            status = "MET" if pr >= goal else "MISSED"
            if rm is not None and (rm >= goal) != (pr >= goal):
                label += " [ratio of medians disagrees]"
        targets.append((label, detail, status))

    target("yielding round trip >= 0.7x blocking, N=1 (TLS)", "yield_tls", "block_tls", 1, 0.7)
    target("yielding round trip >= 0.7x blocking, N=1 (no TLS)", "yield_plain", "block_plain", 1, 0.7)
    if "pgmoon" in cells:
        target("yielding (no TLS) >= 1.0x pgmoon, N=50", "yield_plain", "pgmoon", 50, 1.0)
    else:
        targets.append(("yielding (no TLS) >= 1.0x pgmoon, N=50", "pgmoon not present", "n/a"))
    cyc_text, cyc_md, cyc_targets = cycle_part(samples, meta)
    ir_text, ir_md, ir_targets = ir_part(samples, meta)
    dec_text, dec_md, dec_targets = decode_part(samples, meta)
    targets += cyc_targets + ir_targets + dec_targets
    nop = med("ngx_nop_yield")
    targets.append(("wake-up of a no-op job, rds._nop() (no target)",
                    "median %s us per call" % fmt_num(nop) if nop is not None else "rds._nop missing", "context"))

    rows = []
    for n in ns:
        for c in cells:
            tag = "%s_n%d" % (c, n)
            if ("ngx_qps_" + tag) not in samples:
                continue
            io = samples.get("ngx_iothread_" + tag) or []
            left = samples.get("ngx_jobs_left_" + tag) or []
            errs = sum(samples.get("ngx_err_" + tag) or [])
            rows.append((n, LABEL[c], fmt_num(med("ngx_qps_" + tag)), fmt_num(med("ngx_rps_" + tag)),
                         "%s us" % fmt_num(med("ngx_p50_" + tag)), "%s us" % fmt_num(med("ngx_p99_" + tag)),
                         "%s ms" % fmt_num(med("ngx_req_p99_" + tag)),
                         ("yes" if min(io) >= 1 else ("no" if max(io) < 1 else "mixed")) if io else "n/a",
                         "%d" % max(left) if left else "n/a",
                         "%s us" % fmt_num(med("ngx_cpu_us_per_q_" + tag)) if med("ngx_cpu_us_per_q_" + tag) else "n/a",
                         "%.2f" % med("ngx_cs_per_q_" + tag) if med("ngx_cs_per_q_" + tag) is not None else "n/a",
                         "%s us" % fmt_num(med("ngx_mcpu_us_per_q_" + tag)) if med("ngx_mcpu_us_per_q_" + tag) else "n/a",
                         "%s-%s (n=%d)%s" % (fmt_num(min(samples["ngx_qps_" + tag])), fmt_num(max(samples["ngx_qps_" + tag])),
                                             len(samples["ngx_qps_" + tag]), (", %d errors" % errs) if errs else "")))
    RH = ("N", "path", "q/s", "requests/s", "per query p50", "per query p99", "request p99", "I/O thread", "jobs left",
          "worker CPU/query", "ctx switches/query", "machine CPU/query", "q/s min-max (rounds)")

    ratio_rows = []
    for n in ns:
        for a, b, label in RATIOS:
            if a not in cells or b not in cells:
                continue
            pr, cnt = paired(a, b, n)
            rm = ratio_of_medians(a, b, n)
            if pr is None and rm is None:
                continue
            pa, pb = med("ngx_p50_%s_n%d" % (a, n)), med("ngx_p50_%s_n%d" % (b, n))
            ratio_rows.append((n, label, "%s (n=%d)" % (fmt_ratio(pr), cnt), fmt_ratio(rm),
                               fmt_ratio(pa / pb if pa and pb else None)))
    QH = ("N", "q/s ratio", "paired rounds", "ratio of medians", "per-query p50 time ratio")

    nop_rows = []
    for inst, label in (("yield", "yielding instance"), ("block", "blocking instance (KONG_RDS_IAM_YIELD=off)")):
        if ("ngx_nop_" + inst) not in samples:
            continue
        cpu, cs = med("ngx_nop_cpu_us_" + inst), med("ngx_nop_cs_" + inst)
        nop_rows.append((label, "%s us" % fmt_num(med("ngx_nop_" + inst)), "%s us" % fmt_num(med("ngx_nop_p99_" + inst)),
                         "%s us" % fmt_num(med("ngx_nop_wall_" + inst)),
                         "n/a" if cpu is None else "%s us" % fmt_num(cpu), "n/a" if cs is None else "%.2f" % cs,
                         len(samples["ngx_nop_" + inst])))
    NH = ("rds._nop()", "median per call", "p99 per call", "wall time / calls", "worker CPU/call",
          "ctx switches/call", "rounds")
    TH = ("target", "measured", "status")

    text = ["", "nginx, one worker: %s" % meta.get("meta_ngx_rounds", "?"), "", text_table(RH, rows), "",
            text_table(QH, ratio_rows), ""]
    if nop_rows:
        text += [text_table(NH, nop_rows), ""]
    else:
        text += ["rds._nop() missing in this build: no wake-up numbers", ""]
    text += [t for t in (cyc_text, ir_text, dec_text) if t]
    text += ["all targets:", "", text_table(TH, targets), ""]

    m = meta
    v = m.get("version_ngx_lua", "")
    if v.isdigit():  # 10023 -> 0.10.23
        m = dict(m, version_ngx_lua="%d.%d.%d" % (int(v) // 1000000, int(v) // 1000 % 1000, int(v) % 1000))
    md = [BEGIN, "## Non-blocking calls in nginx (issue 9)", ""]
    md.append("Generated by `bench/nginx/run` on %s%s. One nginx worker (`worker_processes 1`), N concurrent "
              "HTTP/1.1 keep-alive clients (threads of one Python process, 127.0.0.1), each request "
              "%s sequential `select 1 as x` on an open connection. Medians over rounds; ratios within this run."
              % (m.get("meta_ngx_date", "?"), " (BENCH_QUICK=1 smoke run)" if m.get("meta_quick") == "1" else "",
                 m.get("meta_ngx_k", "K").split(".")[0]))
    md.append("")
    md.append(md_table(("item", "value"), [
        ("nginx / lua-nginx-module / LuaJIT", "%s / %s / %s" % (m.get("version_nginx", "?"), m.get("version_ngx_lua", "?"),
                                                             m.get("version_ngx_luajit", "?"))),
        ("pgmoon", ("%s (commit %s), no lpeg needed for int4 results" % (m.get("version_pgmoon"), m.get("version_pgmoon_commit")))
         if m.get("version_pgmoon") else m.get("meta_ngx_pgmoon", "not present")),
        ("kong_rds_iam.so", "%s (built %s)" % (m.get("meta_module", "?"), m.get("meta_ngx_so", "?"))),
        ("yielding instance: rds._nop / rds.stats / I/O thread after the run", "%s / %s / %s" % (
            m.get("meta_ngx_yield_has_nop", "?"), m.get("meta_ngx_yield_has_stats", "?"), m.get("meta_ngx_yield_io_thread", "?"))),
        ("blocking instance: rds._nop / rds.stats / I/O thread after the run", "%s / %s / %s" % (
            m.get("meta_ngx_block_has_nop", "?"), m.get("meta_ngx_block_has_stats", "?"), m.get("meta_ngx_block_io_thread", "?"))),
        ("load average (1, 5, 15 min) at start / end", "%s / %s" % (m.get("meta_ngx_load_start", "?"), m.get("meta_ngx_load_end", "?"))),
        ("waiting for a quiet machine (1-minute load average) before measuring", m.get("meta_ngx_load_wait", "?")),
        ("rounds: K-query requests", m.get("meta_ngx_rounds", "?")),
        ("rounds: connect + query + keepalive cycle", m.get("meta_ngx_cyc_rounds", "not run")),
        ("rounds: 10,000-row decode", m.get("meta_ngx_dec_rounds", "not run")),
        ("measuring time (drive.py, all families)", "%s s" % m.get("meta_ngx_secs", "?")),
    ]))
    md += ["", "### Targets", "", md_table(TH, targets), "", "### Round trip per path", "", md_table(RH, rows), "",
           "### Ratios", "", "q/s ratios: the median of round-by-round ratios (cells of one N run back to back in each "
           "round, in reverse order in even rounds) and the ratio of the medians; the last column compares per-query p50 times (below 1 favours the "
           "first path).", "", md_table(QH, ratio_rows), ""]
    md += cyc_md + ir_md + dec_md
    md += ["### Wake-up cost of a no-op job", ""]
    if nop_rows:
        md += ["%s calls of `rds._nop()` in one content handler, each timed with `clock_gettime(CLOCK_MONOTONIC)` "
               "through the FFI." % "{:,}".format(int(float(m.get("meta_ngx_nop_calls", "20000")))), "", md_table(NH, nop_rows), ""]
    else:
        md += ["`rds._nop` is missing in the measured build: no numbers.", ""]
    md += ["### How these numbers are taken", "", """\
- Two nginx instances, each `worker_processes 1`, started by `bench/nginx/drive.py` with only PATH and the
  emulator's address and md5 user in the master's environment; the blocking one also gets
  `KONG_RDS_IAM_YIELD=off`. `init_by_lua` loads the module in the master. Handlers: `bench/nginx/bench_nginx.lua`,
  `content_by_lua`.
- Ours in the yielding instance runs over a cosocket (`pg_cosocket`, the default), which belongs to its request
  as pgmoon's does: `rds.connect` (an idle session from the module's pool, its cosocket from nginx's keep-alive
  pool), K queries, `conn:keepalive()`. The blocking instance keeps a per-worker free list of open connections
  (Rust objects, reused across requests: N slots at N clients). pgmoon runs as Kong runs it: `pgmoon.new` +
  `connect` (socket from the cosocket keepalive pool, pool_size 128, no new login once warm), K queries,
  `keepalive(60000, 128)`. All paths log in as the emulator's md5 user `pw_md5`; "no TLS" is `pg_ssl = off`
  (ours) and `ssl = false` (pgmoon). "TLS" is our default TLS 1.2 (rustls) to the same server, and in the cycle
  pgmoon with `ssl = true` (nginx's OpenSSL; certificates verified by neither; md5, since pgmoon's SCRAM over
  TLS needs lua-resty-openssl, absent here).
- A cell: warm-up with N clients (each at least 2 requests, fills the pool), `/reset`, S seconds of load, `/stats`,
  `/drain` (closes the cell's connections). q/s = completed requests x K / time until the
  last client's last response. Per-query p50/p99: each `query()` timed inside the handler (for the yielding path
  and pgmoon this includes waiting for the worker while the other N-1 requests run). Request p99: at the client.
  With the blocking path the worker serves one request at a time, so at N > 1 requests queue (request p99 grows
  with N) while each query stays fast.
- I/O thread: whether the worker had the module's I/O thread (`rds.stats().io_thread`, or a thread named
  `kong_rds_iam-io`) after the cell: it starts at the first yielding call, so "yes" on the yielding rows and "no"
  on the blocking ones checks that each instance ran the path it is labelled with (targets are not judged
  otherwise). jobs left: `rds.stats().jobs` (the job table's size) after the cell, 0 when nothing leaked.
- worker CPU/query: CPU time of the nginx worker process, all its threads (the I/O thread included), from
  `/proc/PID/task/*/schedstat` over the measured window, divided by its queries; ctx switches/query: voluntary +
  involuntary context switches of those threads, the same way. PostgreSQL's and the client's CPU are not in it;
  machine CPU/query is the busy time of all CPUs (`/proc/stat`) over the window per query: worker, PostgreSQL,
  the load generator, the kernel's loopback, and whatever else runs on the machine.
- The cycle and decode families run inside the same rounds as the K-query cells (the cycle window right after
  the query cells of its N, the decode requests after the N loop), against the same two instances; their
  connections come from the module's own keep-alive pool (`rds.connect` + `keepalive`), which `/pooldrain`
  empties after each cycle window (and pgmoon's cosocket pools `/drain`). pgmoon over TLS keeps its sockets
  in a pool of its own (`pool_name`): in one shared with the plain sockets it would take those and never
  run TLS.
- Before measuring, `bench/nginx/run` waits (up to `NGX_LOAD_WAIT`, default 1200 s, checking every 30 s) for the
  1-minute load average to fall below `NGX_LOAD_MAX` (1.5); the workers load a copy of `kong_rds_iam.so` taken
  at start.
- Targets are judged on the median of round-by-round ratios (q/s, requests/s, rows/s).""", "", END]
    return "\n".join(text), "\n".join(md)


def splice(md_path, md):
    try:
        with open(md_path) as f:
            old = f.read()
    except OSError:
        old = "# kong_rds_iam benchmark results\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        new = head + md + tail
    else:
        new = old.rstrip("\n") + "\n\n" + md + "\n"
    with open(md_path, "w") as f:
        f.write(new)
