"""Drives bench/nginx/run's measurement: two nginx instances of one worker
each (yielding = the default, blocking = KONG_RDS_IAM_YIELD=off in the
master's environment), a threaded HTTP/1.1 keep-alive load generator on
127.0.0.1, and result lines `name value` on stdout for bench/report.py.
Progress goes to stderr. Standard library only.

    python3 drive.py --prefix DIR [--rounds R] [--secs S] [--warm W] [--k K]
                     [--ns 1,10,50] [--nop-calls 20000] [--pgmoon DIR]

Environment: the emulator's RDS_EMU_* (host, port, db, the md5 user),
BENCH_SO_DIR (where kong_rds_iam.so is), NGINX_BIN, NGINX_MODULES_DIR.

Per round and per N (concurrent clients), cells run back to back in this
order: yield_tls, block_tls, yield_plain, block_plain, pgmoon, and in the
reverse order in even rounds, so that no path always runs first or last
(where a drift within a round would favour it). A cell: a
warm-up with N clients (fills the worker's pool with N open connections),
/reset, S seconds of load (each client: GET /q?v=...&k=K in a loop on its
own keep-alive connection), /stats (per-query times measured inside the
handler), /drain (closes the cell's connections).
Then rds._nop() timed in one handler of each instance.

Two more families, in the same rounds (so their ratios come from the same
conditions):
- cycle (`ngx_cyc_*`): per N of --cyc-ns, right after that N's query
  cells, the cells --cyc-cells of the yielding instance (yield_tls,
  yield_plain, pgmoon, pgmoon_tls, class_plain: kong_rds_iam.pgmoon) in
  one interleaved window
  (cycle_round/load_slices: the paths take turns in slices of --cyc-slice
  seconds, --cyc-secs each in all; their pools stay open through it, which
  is why the bench's emulator allows 400 connections); block_plain (on
  request) and any cell under --attach alone, as the query cells. Each
  request is connect (pooled after the warm-up) + one `select 1 as x` +
  keepalive (GET /cycle?v=...); then /pooldrain (ours) or /drain (pgmoon).
- decode (`ngx_dec_*`): after the N loop, --dec-k sequential requests per
  cell of --dec-cells (yield_tls, yield_plain, block_plain, pgmoon), one
  10,000-row query each (GET /decode?v=...), interleaved request by request
  (the cell order rotates); per round the median per cell.
"""
import argparse
import glob
import http.client
import json
import os
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# cell name -> (instance, handler variant)
CELLS = [
    ("yield_tls", "yield", "rds_tls"),
    ("block_tls", "block", "rds_tls"),
    ("yield_plain", "yield", "rds_plain"),
    ("block_plain", "block", "rds_plain"),
    ("pgmoon", "yield", "pgmoon_plain"),
]

# cycle cells: name -> (instance, handler variant); same variants as above
CYC_CELLS = [
    ("yield_tls", "yield", "rds_tls"),
    ("yield_plain", "yield", "rds_plain"),
    ("block_plain", "block", "rds_plain"),
    ("pgmoon", "yield", "pgmoon_plain"),
    ("pgmoon_tls", "yield", "pgmoon_tls"),
    # Kong's driver once its requires name kong_rds_iam.pgmoon: pgmoon's API
    # over this module, with pgmoon's options
    ("class_plain", "yield", "class_plain"),
]
DEC_CELLS = [c for c in CYC_CELLS if c[0] != "class_plain"]
DEC_ROWS = 10000

HARD_LIMIT_S = 30 * 60  # the whole run stops by itself after this


def say(*a):
    print("bench/nginx:", *a, file=sys.stderr, flush=True)


def emit(name, *values):
    print(name, " ".join("%.3f" % v if isinstance(v, (int, float)) else str(v) for v in values), flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except OSError:
        return False


def children(pid):
    out = []
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            try:
                with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                    out += [int(x) for x in f.read().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


IO_THREAD_COMM = "kong_rds_iam-io"


def has_io_thread(pid):
    """Whether process pid has the module's I/O thread (by its name)."""
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            try:
                with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                    if f.read().strip() == IO_THREAD_COMM:
                        return True
            except OSError:
                pass
    except OSError:
        pass
    return False


def proc_sample(pid):
    """CPU time (ns, /proc/PID/task/*/schedstat) and context switches
    (voluntary, involuntary) summed over the threads of pid, the thread
    count, and the CPU time split into user space and kernel (ns, from
    /proc/PID/task/*/stat: clock ticks, so only sums over many requests mean
    anything)."""
    cpu, vol, invol, n, user, kernel = 0, 0, 0, 0, 0, 0
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return None
    tick_ns = 1e9 / os.sysconf("SC_CLK_TCK")
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                cpu += int(f.read().split()[0])
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                fields = f.read().rsplit(")", 1)[1].split()
                user += int(fields[11]) * tick_ns
                kernel += int(fields[12]) * tick_ns
            with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        invol += int(line.split()[1])
            n += 1
        except (OSError, ValueError, IndexError):
            pass
    return cpu, vol, invol, n, user, kernel


def machine_busy_ns():
    """Busy CPU time of the whole machine (all CPUs, /proc/stat: everything but idle and iowait), ns."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    busy = sum(v[:8]) - v[3] - v[4]  # user nice system idle iowait irq softirq steal
    return busy * 1e9 / os.sysconf("SC_CLK_TCK")


NGINX_CONF = """\
load_module {modules}/ndk_http_module.so;
load_module {modules}/ngx_http_lua_module.so;
{user}
daemon off;
master_process {master};
worker_processes 1;
pid logs/nginx.pid;
error_log logs/error.log warn;
worker_shutdown_timeout 5s;
{env}
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path temp/body;
  proxy_temp_path temp/proxy;
  fastcgi_temp_path temp/fastcgi;
  uwsgi_temp_path temp/uwsgi;
  scgi_temp_path temp/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  lua_socket_log_errors off;
  lua_package_path "{lpath}";
  lua_package_cpath "{cpath}";
  # The module is loaded in the master (it reads KONG_RDS_IAM_YIELD once, at load).
  init_by_lua_block {{
    require "kong_rds_iam"
    require "bench_nginx"
  }}
  server {{
    listen 127.0.0.1:{port};
    location = /q     {{ content_by_lua_block {{ require("bench_nginx").query() }} }}
    location = /reset {{ content_by_lua_block {{ require("bench_nginx").reset() }} }}
    location = /stats {{ content_by_lua_block {{ require("bench_nginx").stats() }} }}
    location = /drain {{ content_by_lua_block {{ require("bench_nginx").drain() }} }}
    location = /nop   {{ content_by_lua_block {{ require("bench_nginx").nop() }} }}
    location = /info  {{ content_by_lua_block {{ require("bench_nginx").info() }} }}
    location = /cycle {{ content_by_lua_block {{ require("bench_nginx").cycle() }} }}
    location = /decode {{ content_by_lua_block {{ require("bench_nginx").decode() }} }}
    location = /pooldrain {{ content_by_lua_block {{ require("bench_nginx").pooldrain() }} }}
    location = /empty {{ content_by_lua_block {{ ngx.print("ok") }} }}
  }}
}}
"""

PASS_ENV = ("RDS_EMU_HOST", "RDS_EMU_PORT", "RDS_EMU_DB", "RDS_EMU_PW_MD5_USER", "RDS_EMU_PW_MD5_PASSWORD")


class Nginx:
    def __init__(self, name, prefix, yield_off, so_dir, pgmoon_dir, wrap=None):
        """wrap: a command the nginx runs under (e.g. valgrind), in one
        process (master_process off) so that it sees the worker's work."""
        self.name, self.prefix, self.port = name, os.path.join(prefix, name), free_port()
        self.proc, self.wrap = None, wrap
        for d in ("conf", "logs", "temp"):
            os.makedirs(os.path.join(self.prefix, d), exist_ok=True)
        # the module's Lua part (kong_rds_iam.pgmoon) from this checkout
        lpath = [HERE + "/?.lua", ROOT + "/lua/?.lua", ROOT + "/lua/?/init.lua"]
        if pgmoon_dir:
            lpath += [pgmoon_dir + "/?.lua", pgmoon_dir + "/?/init.lua"]
        lpath += ["/usr/share/lua/5.1/?.lua", "/usr/share/lua/5.1/?/init.lua", ";"]
        cpath = [so_dir + "/?.so", "/usr/lib/x86_64-linux-gnu/lua/5.1/?.so", ";"]
        env_lines = ["env %s;" % k for k in PASS_ENV] + ["env KONG_RDS_IAM_YIELD;"]
        conf = NGINX_CONF.format(
            modules=os.environ.get("NGINX_MODULES_DIR", "/usr/lib/nginx/modules"),
            user="user root;" if os.geteuid() == 0 else "", master="off" if wrap else "on",
            env="\n".join(env_lines), lpath=";".join(lpath), cpath=";".join(cpath), port=self.port)
        with open(os.path.join(self.prefix, "conf", "nginx.conf"), "w") as f:
            f.write(conf)
        # The master's whole environment: nothing of ours but what it needs.
        self.env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        for k in PASS_ENV:
            self.env[k] = os.environ[k]
        if yield_off:
            self.env["KONG_RDS_IAM_YIELD"] = "off"

    def start(self):
        nginx = os.environ.get("NGINX_BIN", "/usr/sbin/nginx")
        log = open(os.path.join(self.prefix, "logs", "stdout.log"), "w")
        self.proc = subprocess.Popen((self.wrap or []) + [nginx, "-p", self.prefix + "/", "-c", "conf/nginx.conf",
                                                          "-e", "logs/error.log"],
                                     env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + (120 if self.wrap else 15)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("nginx %s exited at start:\n%s" % (self.name, self.error_log()))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx %s did not come up:\n%s" % (self.name, self.error_log()))

    def stop(self):
        if not self.proc or self.proc.poll() is not None:
            return
        pid = self.proc.pid
        workers = children(pid)
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            for w in workers:
                if alive(w):
                    os.kill(w, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait(5)

    def worker_pid(self):
        if self.wrap:
            return self.proc.pid  # one process: master and worker
        w = [p for p in children(self.proc.pid) if alive(p)]
        return w[0] if w else None

    def error_log(self):
        try:
            with open(os.path.join(self.prefix, "logs", "error.log")) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def get(self, path, timeout=120):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def get_json(self, path, timeout=120):
        status, body = self.get(path, timeout)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, {"error": body[:300].decode("utf-8", "replace")}


def load(inst, path, n, secs, min_each=0, max_each=1000000):
    """n threads, each on its own keep-alive connection, GET path in a loop
    for secs (and at least min_each times). Returns requests, errors,
    elapsed, request latencies (s), first error."""
    barrier = threading.Barrier(n + 1)
    results = [None] * n
    hard = time.monotonic() + secs + 120  # a stuck cell cannot hold the run

    def client(i):
        lat, errs, first_err = [], 0, None
        c = http.client.HTTPConnection("127.0.0.1", inst.port, timeout=120)
        try:
            c.connect()
        except OSError as e:
            barrier.wait()
            results[i] = ([], 1, "connect: %s" % e, time.monotonic())
            return
        barrier.wait()
        deadline = time.monotonic() + secs
        count = 0
        while count < max_each and (time.monotonic() < deadline or count < min_each) and time.monotonic() < hard:
            t0 = time.monotonic()
            try:
                c.request("GET", path)
                r = c.getresponse()
                body = r.read()
                ok = r.status == 200
            except (OSError, http.client.HTTPException) as e:
                ok, body = False, str(e).encode()
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", inst.port, timeout=120)
            t1 = time.monotonic()
            count += 1
            if ok:
                lat.append(t1 - t0)
            else:
                errs += 1
                if first_err is None:
                    first_err = body[:300].decode("utf-8", "replace")
                if errs > 20:
                    break
        c.close()
        results[i] = (lat, errs, first_err, time.monotonic())

    start = [0.0]
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    start[0] = time.monotonic()
    for t in threads:
        t.join(secs + 180)
    done = [r for r in results if r is not None]
    lat = [x for r in done for x in r[0]]
    errs = sum(r[1] for r in done) + (n - len(done))
    first_err = next((r[2] for r in done if r[2]), None)
    end = max((r[3] for r in done), default=start[0])
    return len(lat), errs, end - start[0], lat, first_err


def response_in(buf):
    """(head lower-cased, body start, end) of the first whole HTTP response
    in buf, or None while it is not all there (Content-Length, chunked, or
    else whatever has arrived)."""
    h = buf.find(b"\r\n\r\n")
    if h < 0:
        return None
    head = bytes(buf[:h]).lower()
    body_at = h + 4
    m = re.search(rb"\r\ncontent-length: *(\d+)", head)
    if m:
        total = body_at + int(m.group(1))
        return (head, body_at, total) if len(buf) >= total else None
    if b"transfer-encoding: chunked" in head:
        t = buf.find(b"0\r\n\r\n", body_at)
        return (head, body_at, t + 5) if t >= 0 else None
    return head, body_at, len(buf)


def load_fast(inst, path, n, secs, min_each=0):
    """As load(), with one thread driving n non-blocking keep-alive
    connections through epoll (selectors), for short requests where
    http.client in threads would be the bottleneck. Also returns the
    client's own CPU time (s) over the window."""
    req = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path).encode()
    sel = selectors.DefaultSelector()
    lat, errs, first_err = [], 0, [None]
    conns = []
    for _ in range(n):
        try:
            c = socket.create_connection(("127.0.0.1", inst.port), timeout=10)
        except OSError as e:
            errs += 1
            first_err[0] = first_err[0] or "connect: %s" % e
            continue
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.setblocking(False)
        conns.append(c)
    state = {}
    cpu0 = time.process_time()
    start = time.monotonic()
    deadline, hard = start + secs, start + secs + 120
    end = start
    for c in conns:
        state[c] = [bytearray(), time.monotonic(), 0]  # buffer, t0 of the request in flight, count
        c.send(req)
        sel.register(c, selectors.EVENT_READ)
    live = len(conns)

    def done_with(c):
        sel.unregister(c)
        c.close()

    while live:
        now = time.monotonic()
        if now > hard:
            errs += live
            first_err[0] = first_err[0] or "hard time limit"
            break
        for key, _ in sel.select(timeout=1.0):
            c = key.fileobj
            st = state[c]
            try:
                data = c.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as e:
                data, first_err[0] = b"", first_err[0] or str(e)
            if not data:
                errs += 1
                first_err[0] = first_err[0] or "connection closed by nginx"
                done_with(c)
                live -= 1
                continue
            buf = st[0]
            buf += data
            got = response_in(buf)
            if got is None:
                continue
            head, body_at, total = got
            ok = head.startswith(b"http/1.1 200")
            t1 = time.monotonic()
            if ok:
                lat.append(t1 - st[1])
            else:
                errs += 1
                first_err[0] = first_err[0] or bytes(buf[body_at:total])[:300].decode("utf-8", "replace")
            del buf[:total]
            st[2] += 1
            end = max(end, t1)
            if (t1 < deadline or st[2] < min_each) and errs <= 20 * max(1, n):
                st[1] = time.monotonic()
                c.send(req)
            else:
                done_with(c)
                live -= 1
    for c in conns:
        try:
            c.close()
        except OSError:
            pass
    sel.close()
    return len(lat), errs, end - start, lat, first_err[0], time.process_time() - cpu0


def pct(sorted_vals, q):
    if not sorted_vals:
        return 0.0
    i = max(0, min(len(sorted_vals) - 1, int(-(-q * len(sorted_vals) // 1)) - 1))
    return sorted_vals[i]


def drain(inst, variant):
    """Closes the idle connections of variant in inst's worker: ours from the
    module's pool (/pooldrain), pgmoon's from the cosocket pool (/drain)."""
    if variant.startswith("pgmoon") or variant.startswith("class"):
        _, dr = inst.get_json("/drain?v=%s" % variant)
    else:
        _, dr = inst.get_json("/pooldrain?v=%s" % variant)
    return dr.get("closed")


def cycle_cell(inst, r, n, cell, variant, secs, warm, attach):
    """One cell of the cycle run alone (a blocking cell, or any under
    --attach): warm-up (fills the pool with n connections), /reset, secs of
    load, /stats, drain."""
    path = "/cycle?v=%s" % variant
    tag = "%s_n%d" % (cell, n)
    _, werr, _, _, wfirst, _ = load_fast(inst, path, n, warm, min_each=2)
    if werr:
        say("round %d cycle %s warm-up: %d errors, first: %s" % (r, tag, werr, wfirst))
    inst.get("/reset")
    wpid = inst.worker_pid()
    p0 = proc_sample(wpid) if wpid else None
    m0 = machine_busy_ns()
    att = None
    if attach and wpid:
        cmd = attach.format(pid=wpid, tag="cycle_%s_r%d" % (tag, r), secs=max(0.5, secs - 0.4))
        att = subprocess.Popen(["/bin/sh", "-c", "sleep 0.2; exec " + cmd], stdout=sys.stderr, stderr=sys.stderr)
    reqs, errs, elapsed, lat, first, ccpu = load_fast(inst, path, n, secs)
    p1 = proc_sample(wpid) if wpid else None
    m1 = machine_busy_ns()
    if att:
        try:
            att.wait(secs + 30)
        except subprocess.TimeoutExpired:
            att.kill()
            att.wait()
    _, st = inst.get_json("/stats?v=%s" % variant)
    drain(inst, variant)
    both = bool(p0 and p1)
    report_cycle(r, tag, {
        "reqs": reqs, "secs": elapsed, "lat": lat, "errs": errs, "first_err": first, "client_s": ccpu,
        "mach_ns": m1 - m0, "ok": both, "cpu_ns": p1[0] - p0[0] if both else 0,
        "user_ns": p1[4] - p0[4] if both else 0, "kernel_ns": p1[5] - p0[5] if both else 0,
        "cs": (p1[1] - p0[1]) + (p1[2] - p0[2]) if both else 0}, st, wpid)


def report_cycle(r, tag, o, st, wpid):
    """The result lines of one cycle cell in one round: `o` is a path's
    load_slices() entry (or the same from a cell run alone), `st` the
    handler's /stats of that variant."""
    if o["errs"]:
        say("round %d cycle %s: %d errors, first: %s" % (r, tag, o["errs"], o["first_err"]))
        emit("ngx_cyc_err_" + tag, o["errs"])
    reqs = o["reqs"]
    if not reqs or o["secs"] <= 0:
        return
    lat = sorted(o["lat"])
    emit("ngx_cyc_round_" + tag, r)
    emit("ngx_cyc_rps_" + tag, reqs / o["secs"])
    emit("ngx_cyc_p50_" + tag, st.get("p50_us", 0))
    emit("ngx_cyc_p99_" + tag, st.get("p99_us", 0))
    emit("ngx_cyc_req_p50_" + tag, pct(lat, 0.5) * 1e3)
    emit("ngx_cyc_req_p99_" + tag, pct(lat, 0.99) * 1e3)
    emit("ngx_cyc_new_" + tag, st.get("new_conns", 0))
    iot = 1 if (st.get("io_thread") is True or (wpid and has_io_thread(wpid))) else 0
    emit("ngx_cyc_iothread_" + tag, iot)
    if st.get("jobs") is not None:
        emit("ngx_cyc_jobs_left_" + tag, st["jobs"])
    cpu = cs = None
    if o["ok"]:
        cpu, cs = o["cpu_ns"] / 1e3 / reqs, o["cs"] / reqs
        emit("ngx_cyc_cpu_us_" + tag, cpu)
        emit("ngx_cyc_cs_" + tag, cs)
        emit("ngx_cyc_user_us_" + tag, o["user_ns"] / 1e3 / reqs)
        emit("ngx_cyc_kernel_us_" + tag, o["kernel_ns"] / 1e3 / reqs)
    emit("ngx_cyc_mcpu_us_" + tag, o["mach_ns"] / 1e3 / reqs)
    emit("ngx_cyc_client_cpu_us_" + tag, o["client_s"] * 1e6 / reqs)
    say("round %d cycle %-16s %8.0f req/s  p50 %7.1f us  p99 %8.1f us  req p99 %7.2f ms  new conns %s  io thread %s  "
        "jobs left %s  worker CPU/req %s us  ctx sw/req %s  machine CPU/req %.1f us  client CPU/req %.1f us" % (
            r, tag, reqs / o["secs"], st.get("p50_us", 0), st.get("p99_us", 0), pct(lat, 0.99) * 1e3,
            st.get("new_conns"), "yes" if iot else "no", st.get("jobs", "n/a"),
            "n/a" if cpu is None else "%.1f (user %.1f, kernel %.1f)" % (
                cpu, o["user_ns"] / 1e3 / reqs, o["kernel_ns"] / 1e3 / reqs),
            "n/a" if cs is None else "%.2f" % cs,
            o["mach_ns"] / 1e3 / reqs, o["client_s"] * 1e6 / reqs))


def load_slices(targets, n, slice_s, slices, reverse):
    """Interleaved load for the cycle family: `targets` is a list of
    (nginx instance, request path), one instance per path, each with n
    keep-alive connections (one thread, epoll); one path runs at a time for
    slice_s seconds, the paths
    taking turns, `slices` turns each (ABCD DCBA ABCD ...; starting with the
    reversed order when `reverse`), so that a drift of the machine's state
    (seen here to move a path's rate by 2x between two cells seconds apart)
    reaches every path alike. A slice ends at a barrier: no request of the
    next path is sent before the last answer of this one, so each answer
    belongs to its slice's path and so does the time. Per path: requests,
    seconds, request latencies (s), the worker's CPU time and context
    switches, machine busy time (ns) and this process's CPU time (s) over
    its slices, and errors with the first one."""
    reqs = [("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % p).encode() for _, p in targets]
    out = [{"reqs": 0, "secs": 0.0, "lat": [], "cpu_ns": 0, "user_ns": 0.0, "kernel_ns": 0.0, "cs": 0,
            "mach_ns": 0.0, "client_s": 0.0,
            "errs": 0, "first_err": None, "ok": True} for _ in targets]
    sel = selectors.DefaultSelector()
    conns_of, bufs = [], {}
    for inst, _ in targets:
        conns = []
        for _ in range(n):
            c = socket.create_connection(("127.0.0.1", inst.port), timeout=10)
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c.setblocking(False)
            sel.register(c, selectors.EVENT_READ)
            bufs[c] = bytearray()
            conns.append(c)
        conns_of.append(conns)
    wpids = [inst.worker_pid() for inst, _ in targets]
    order = list(range(len(targets)))
    try:
        for turn in range(slices):
            seq = order if (turn % 2 == 0) != bool(reverse) else order[::-1]
            for i in seq:
                o, conns, wpid = out[i], conns_of[i], wpids[i]
                p0 = proc_sample(wpid) if wpid else None
                m0, c0 = machine_busy_ns(), time.process_time()
                start = time.monotonic()
                deadline, hard = start + slice_s, start + slice_s + 60
                sent_at = {}
                for c in conns:
                    sent_at[c] = time.monotonic()
                    c.send(reqs[i])
                end = start
                while sent_at:
                    if time.monotonic() > hard:
                        raise RuntimeError("interleaved load: no answer within 60 s")
                    for key, _ in sel.select(timeout=1.0):
                        c = key.fileobj
                        try:
                            data = c.recv(65536)
                        except (BlockingIOError, InterruptedError):
                            continue
                        if not data:
                            raise RuntimeError("interleaved load: nginx closed a connection")
                        buf = bufs[c]
                        buf += data
                        got = response_in(buf)
                        if got is None:
                            continue
                        head, body_at, total = got
                        t1 = time.monotonic()
                        if head.startswith(b"http/1.1 200"):
                            o["lat"].append(t1 - sent_at[c])
                            o["reqs"] += 1
                        else:
                            o["errs"] += 1
                            o["first_err"] = o["first_err"] or bytes(buf[body_at:total])[:300].decode("utf-8", "replace")
                        del buf[:total]
                        end = t1
                        if t1 < deadline and o["errs"] <= 20 * n:
                            sent_at[c] = time.monotonic()
                            c.send(reqs[i])
                        else:
                            del sent_at[c]
                p1 = proc_sample(wpid) if wpid else None
                m1, c1 = machine_busy_ns(), time.process_time()
                o["secs"] += end - start
                o["mach_ns"] += m1 - m0
                o["client_s"] += c1 - c0
                if p0 and p1:
                    o["cpu_ns"] += p1[0] - p0[0]
                    o["user_ns"] += p1[4] - p0[4]
                    o["kernel_ns"] += p1[5] - p0[5]
                    o["cs"] += (p1[1] - p0[1]) + (p1[2] - p0[2])
                else:
                    o["ok"] = False
    finally:
        sel.close()
        for conns in conns_of:
            for c in conns:
                c.close()
    return out


def cycle_round(insts, r, n, cells, secs, warm, slice_s):
    """The yielding cycle cells of one round, interleaved (see load_slices),
    each in its own nginx instance (`insts`: cell -> instance; one worker
    each, as one driver runs in a production worker: LuaJIT forms its traces
    along the first hot path, and a path that shares driver code with
    another in the same worker runs partly on side exits): warm-up of each
    (fills its pool with n connections), /reset, secs of load per cell in
    slices of slice_s, /stats per cell, then every cell's pool drained.
    Emits the same lines per cell as a cell run alone would."""
    for cell, variant in cells:
        _, werr, _, _, wfirst, _ = load_fast(insts[cell], "/cycle?v=%s" % variant, n, warm, min_each=2)
        if werr:
            say("round %d cycle %s_n%d warm-up: %d errors, first: %s" % (r, cell, n, werr, wfirst))
    for cell, _ in cells:
        insts[cell].get("/reset")
    slices = max(1, int(round(secs / slice_s)))
    targets = [(insts[cell], "/cycle?v=%s" % v) for cell, v in cells]
    res = load_slices(targets, n, secs / slices, slices, reverse=(r % 2 == 0))
    for (cell, variant), o in zip(cells, res):
        inst = insts[cell]
        _, st = inst.get_json("/stats?v=%s" % variant)
        report_cycle(r, "%s_n%d" % (cell, n), o, st, inst.worker_pid())
    for cell, variant in cells:
        drain(insts[cell], variant)


# the paths of the instruction count: (cell, request path)
IR_PATHS = [
    ("empty", "/empty"),
    ("yield_plain", "/cycle?v=rds_plain"),
    ("pgmoon", "/cycle?v=pgmoon_plain"),
    ("class_plain", "/cycle?v=class_plain"),
    ("yield_tls", "/cycle?v=rds_tls"),
    ("pgmoon_tls", "/cycle?v=pgmoon_tls"),
]


def sequential(inst, path, n):
    """n requests of path, one after another on one keep-alive connection."""
    c = socket.create_connection(("127.0.0.1", inst.port), timeout=60)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path).encode()
    try:
        for _ in range(n):
            c.send(req)
            buf = bytearray()
            while response_in(buf) is None:
                data = c.recv(65536)
                if not data:
                    raise RuntimeError("%s: nginx closed the connection" % path)
                buf += data
            if not buf.startswith(b"HTTP/1.1 200"):
                raise RuntimeError("%s: %s" % (path, bytes(buf[:300])))
    finally:
        c.close()


def instruction_counts(prefix, so_dir, pgmoon_dir, n, warm=300):
    """The cycle's CPU work counted, not timed: for each path of IR_PATHS an
    nginx process of its own under valgrind's callgrind (cache simulation
    on) serves it sequentially, warm requests first, then n with the
    counters zeroed before and dumped after (callgrind_control). A process
    per path: LuaJIT forms its traces along the first hot path, and a second
    path through the same driver code then runs partly on side exits (seen
    here: 12-19% more instructions than alone). Emits per request: Ir
    (instructions), I1mr (first-level instruction cache misses), D1mr + D1mw
    (data), all of the process's user-space code (nginx, ngx_lua, LuaJIT,
    its traces, libc, the module and its I/O thread); the kernel's work is
    not in it. Other load on the machine does not change the counts; where
    garbage collection and JIT traces fall does, by a few percent."""
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        say("instruction count skipped: valgrind not installed")
        emit("meta_ngx_ir", "skipped: valgrind not installed")
        return
    out = os.path.join(prefix, "callgrind")
    os.makedirs(out, exist_ok=True)
    wrap = ["valgrind", "--tool=callgrind", "--cache-sim=yes", "--smc-check=all-non-file",
            "--callgrind-out-file=%s/cg.%%p" % out]
    for cell, path in IR_PATHS:
        if cell.startswith("pgmoon") and not pgmoon_dir:
            continue
        inst = Nginx("callgrind_" + cell, prefix, False, so_dir, pgmoon_dir, wrap=wrap)
        inst.start()
        try:
            pid = str(inst.proc.pid)
            sequential(inst, path, warm)
            subprocess.run(["callgrind_control", "-z", pid], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            t0 = time.monotonic()
            sequential(inst, path, n)
            subprocess.run(["callgrind_control", "-d", cell, pid], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            dt = time.monotonic() - t0
            dumps = sorted(glob.glob("%s/cg.%s.*" % (out, pid)), key=os.path.getmtime)
            with open(dumps[-1]) as f:
                text = f.read()
            events = re.search(r"^events: (.*)$", text, re.M).group(1).split()
            summary = [int(x) for x in re.search(r"^summary: (.*)$", text, re.M).group(1).split()]
            got = dict(zip(events, summary))
            emit("ngx_ir_" + cell, got["Ir"] / n)
            emit("ngx_i1mr_" + cell, got["I1mr"] / n)
            emit("ngx_d1m_" + cell, (got["D1mr"] + got["D1mw"]) / n)
            say("instructions %-12s %8.0f Ir/request  %6.0f I1 misses  %6.0f D1 misses  (%d requests, %.1f s under callgrind)" % (
                cell, got["Ir"] / n, got["I1mr"] / n, (got["D1mr"] + got["D1mw"]) / n, n, dt))
        finally:
            inst.stop()
    emit("meta_ngx_ir", "%d requests per path after %d warm-up, each path in an nginx process of its own under "
         "callgrind (%s)" % (n, warm, subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()))


DECODE_SQL = "select id, big, name, flag, score, created from bench_rows_mixed order by id"


def libpq_floor(k):
    """The server + transfer floor of the decode query: psql (libpq, C, rows
    kept in a PGresult, no Lua) over TCP without TLS as the md5 user, k
    queries on one connection, each timed by psql's \\timing (printing to
    /dev/null is outside it). Returns the times (ms), or None without psql."""
    psql = shutil.which("psql")
    if not psql:
        return None
    script = "\\timing on\n\\o /dev/null\n" + ("%s;\n" % DECODE_SQL) * k
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGPASSWORD": os.environ["RDS_EMU_PW_MD5_PASSWORD"],
           "PGSSLMODE": "disable", "PGGSSENCMODE": "disable", "PGCONNECT_TIMEOUT": "10"}
    try:
        out = subprocess.run([psql, "-X", "-q", "-h", os.environ.get("RDS_EMU_HOST", "127.0.0.1"),
                              "-p", os.environ["RDS_EMU_PORT"], "-U", os.environ["RDS_EMU_PW_MD5_USER"],
                              "-d", os.environ.get("RDS_EMU_DB", "kong"), "-v", "ON_ERROR_STOP=1"],
                             input=script.encode(), env=env, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        say("psql floor failed: %s" % e)
        return None
    times = [float(x) for x in re.findall(rb"Time: ([0-9.]+) ms", out.stdout + out.stderr)]
    if out.returncode != 0 or len(times) != k:
        say("psql floor: rc %d, %d timings: %s" % (out.returncode, len(times), (out.stderr or b"")[-300:]))
        return None
    return times


def decode_round(insts, r, cells, k, last):
    """k sequential 10,000-row requests per cell, interleaved request by
    request (the starting cell rotates), after one unmeasured request per
    cell; per cell the round's median query time, client time, worker CPU."""
    per = {c[0]: {"us": [], "req_ms": [], "cpu_ms": [], "mcpu_ms": [], "cs": []} for c in cells}
    errs = {c[0]: 0 for c in cells}
    for cell, iname, variant in cells:  # warm-up: opens the connection, JIT
        status, body = insts[iname].get_json("/decode?v=%s" % variant)
        if status != 200:
            say("round %d decode %s warm-up: %s %s" % (r, cell, status, body))
    for i in range(k):
        for j in range(len(cells)):
            cell, iname, variant = cells[(i + j) % len(cells)]
            inst = insts[iname]
            wpid = inst.worker_pid()
            p0 = proc_sample(wpid) if wpid else None
            m0 = machine_busy_ns()
            t0 = time.monotonic()
            status, body = inst.get_json("/decode?v=%s" % variant)
            t1 = time.monotonic()
            m1 = machine_busy_ns()
            p1 = proc_sample(wpid) if wpid else None
            if status != 200 or body.get("rows") != DEC_ROWS:
                errs[cell] += 1
                if errs[cell] == 1:
                    say("round %d decode %s: %s %s" % (r, cell, status, body))
                continue
            d = per[cell]
            d["us"].append(body["us"])
            d["req_ms"].append((t1 - t0) * 1e3)
            d["mcpu_ms"].append((m1 - m0) / 1e6)
            if p0 and p1:
                d["cpu_ms"].append((p1[0] - p0[0]) / 1e6)
                d["cs"].append((p1[1] - p0[1]) + (p1[2] - p0[2]))
    floor = libpq_floor(k + 1)
    if floor:
        ms = statistics.median(floor[1:])  # the first query warms the connection up
        emit("ngx_dec_round_libpq", r)
        emit("ngx_dec_rows_per_s_libpq", DEC_ROWS / (ms / 1e3))
        emit("ngx_dec_ms_libpq", ms)
        emit("ngx_dec_min_ms_libpq", min(floor[1:]))
        say("round %d decode %-12s %8.0f rows/s  query %6.2f ms (min %6.2f)  (psql \\timing, server + transfer floor)" % (
            r, "libpq", DEC_ROWS / (ms / 1e3), ms, min(floor[1:])))
    for cell, iname, variant in cells:
        d = per[cell]
        if errs[cell]:
            emit("ngx_dec_err_" + cell, errs[cell])
        if d["us"]:
            us = statistics.median(d["us"])
            emit("ngx_dec_round_" + cell, r)
            emit("ngx_dec_rows_per_s_" + cell, DEC_ROWS / (us / 1e6))
            emit("ngx_dec_ms_" + cell, us / 1e3)
            emit("ngx_dec_min_ms_" + cell, min(d["us"]) / 1e3)
            emit("ngx_dec_req_ms_" + cell, statistics.median(d["req_ms"]))
            emit("ngx_dec_mcpu_ms_" + cell, statistics.median(d["mcpu_ms"]))
            if d["cpu_ms"]:
                emit("ngx_dec_cpu_ms_" + cell, statistics.median(d["cpu_ms"]))
                emit("ngx_dec_cs_" + cell, statistics.median(d["cs"]))
            say("round %d decode %-12s %8.0f rows/s  query %6.2f ms (min %6.2f)  request %6.2f ms  worker CPU %s ms  "
                "ctx sw %s  machine CPU %.2f ms  (n=%d)" % (
                    r, cell, DEC_ROWS / (us / 1e6), us / 1e3, min(d["us"]) / 1e3, statistics.median(d["req_ms"]),
                    "%.2f" % statistics.median(d["cpu_ms"]) if d["cpu_ms"] else "n/a",
                    "%.0f" % statistics.median(d["cs"]) if d["cs"] else "n/a",
                    statistics.median(d["mcpu_ms"]), len(d["us"])))
    if last:
        for cell, iname, variant in cells:
            drain(insts[iname], variant)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--secs", type=float, default=2.0)
    ap.add_argument("--warm", type=float, default=0.5)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--ns", default="1,10,50")
    ap.add_argument("--cells", default=",".join(c[0] for c in CELLS))
    ap.add_argument("--nop-calls", type=int, default=20000)
    ap.add_argument("--pgmoon", default="")
    ap.add_argument("--cyc-ns", default="1,50")
    ap.add_argument("--cyc-cells", default="yield_tls,yield_plain,pgmoon,pgmoon_tls,class_plain")
    ap.add_argument("--cyc-secs", type=float, default=None, help="default: --secs")
    ap.add_argument("--cyc-warm", type=float, default=None, help="default: --warm")
    ap.add_argument("--ir-n", type=int, default=2000,
                    help="requests per path counted under callgrind (instructions per cycle; 0: none)")
    ap.add_argument("--cyc-slice", type=float, default=0.25,
                    help="seconds of one path's turn in the interleaved cycle window")
    ap.add_argument("--dec-k", type=int, default=5, help="10,000-row requests per cell and round (0: none)")
    ap.add_argument("--dec-cells", default="yield_tls,yield_plain,block_plain,pgmoon")
    ap.add_argument("--attach", default="",
                    help="shell command run during each measured window, {pid} = the worker, {tag}, {secs}; "
                         "e.g. 'perf stat -p {pid} -- sleep {secs}' (output to stderr)")
    a = ap.parse_args()
    t_begin = time.monotonic()
    ns = [int(x) for x in a.ns.split(",") if x]
    want = set(a.cells.split(","))
    pgmoon_dir = a.pgmoon if a.pgmoon and os.path.isfile(os.path.join(a.pgmoon, "pgmoon", "init.lua")) else ""
    cells = [c for c in CELLS if c[0] in want and (not c[0].startswith("pgmoon") or pgmoon_dir)]
    so_dir = os.environ.get("BENCH_SO_DIR", os.path.join(ROOT, "target", "lua"))
    cyc_ns = [int(x) for x in a.cyc_ns.split(",") if x]
    cyc_want = set(x for x in a.cyc_cells.split(",") if x)
    cyc_cells = [c for c in CYC_CELLS if c[0] in cyc_want and (not c[0].startswith("pgmoon") or pgmoon_dir)]
    if not cyc_cells:
        cyc_ns = []
    cyc_secs = a.secs if a.cyc_secs is None else a.cyc_secs
    cyc_warm = a.warm if a.cyc_warm is None else a.cyc_warm
    dec_want = set(x for x in a.dec_cells.split(",") if x)
    dec_cells = [c for c in DEC_CELLS if c[0] in dec_want and (not c[0].startswith("pgmoon") or pgmoon_dir)] if a.dec_k > 0 else []

    insts = {"yield": Nginx("yield", a.prefix, False, so_dir, pgmoon_dir),
             "block": Nginx("block", a.prefix, True, so_dir, pgmoon_dir)}
    # the interleaved cycle window: an instance per yielding cell
    cyc_insts = {} if a.attach else {
        cell: Nginx("cycle_" + cell, a.prefix, False, so_dir, pgmoon_dir) for cell, iname, _ in cyc_cells if iname == "yield"}
    try:
        for inst in list(insts.values()) + list(cyc_insts.values()):
            inst.start()
        for name, inst in insts.items():
            status, info = inst.get_json("/info")
            if status != 200:
                raise RuntimeError("%s /info: %s %s\n%s" % (name, status, info, inst.error_log()))
            say("%s instance (port %d, worker %s): %s" % (name, inst.port, inst.worker_pid(), json.dumps(info, sort_keys=True)))
            emit("meta_ngx_%s_has_nop" % name, "yes" if info.get("has_nop") else "no")
            emit("meta_ngx_%s_has_stats" % name, "yes" if info.get("has_stats") else "no")
            emit("meta_ngx_%s_io_thread_start" % name, {True: "yes", False: "no"}.get(info.get("io_thread"), "n/a"))
            if name == "yield":
                emit("version_ngx_lua", "%s" % info.get("ngx_lua_version"))
                emit("version_ngx_luajit", "%s" % info.get("jit"))
                if pgmoon_dir:
                    emit("version_pgmoon", "%s" % info.get("pgmoon_version"))
        emit("meta_ngx_pgmoon", "present (%s)" % pgmoon_dir if pgmoon_dir else "not present")
        emit("meta_ngx_rounds", "%d rounds x %d cells x %gs (warm-up %gs), K=%d queries per request, N=%s" % (
            a.rounds, len(cells) * len(ns), a.secs, a.warm, a.k, "/".join(map(str, ns))))
        emit("meta_ngx_k", a.k)
        if cyc_ns:
            emit("meta_ngx_cyc_rounds", "%d rounds x %d cells x %gs (warm-up %gs), N=%s" % (
                a.rounds, len(cyc_cells) * len(cyc_ns), cyc_secs, cyc_warm, "/".join(map(str, cyc_ns))))
        if dec_cells:
            emit("meta_ngx_dec_rounds", "%d rounds x %d requests per path (%s), interleaved" % (
                a.rounds, a.dec_k, "/".join(c[0] for c in dec_cells)))
        emit("meta_ngx_nop_calls", a.nop_calls)

        for r in range(1, a.rounds + 1):
            step = 1 if r % 2 else -1  # odd rounds in the listed order, even rounds reversed
            for n in sorted(set(ns) | set(cyc_ns)):
                for cell, iname, variant in (cells[::step] if n in ns else []):
                    if time.monotonic() - t_begin > HARD_LIMIT_S:
                        raise RuntimeError("time limit (%d s) reached" % HARD_LIMIT_S)
                    inst = insts[iname]
                    path = "/q?v=%s&k=%d" % (variant, a.k)
                    _, werr, _, _, wfirst = load(inst, path, n, a.warm, min_each=2)
                    if werr:
                        say("round %d N=%d %s warm-up: %d errors, first: %s" % (r, n, cell, werr, wfirst))
                    inst.get("/reset")
                    wpid = inst.worker_pid()
                    p0 = proc_sample(wpid) if wpid else None
                    m0 = machine_busy_ns()
                    att = None
                    if a.attach and wpid:
                        cmd = a.attach.format(pid=wpid, tag="%s_n%d_r%d" % (cell, n, r), secs=max(0.5, a.secs - 0.4))
                        att = subprocess.Popen(["/bin/sh", "-c", "sleep 0.2; exec " + cmd], stdout=sys.stderr, stderr=sys.stderr)
                    reqs, errs, elapsed, lat, first = load(inst, path, n, a.secs)
                    p1 = proc_sample(wpid) if wpid else None
                    m1 = machine_busy_ns()
                    if att:
                        try:
                            att.wait(a.secs + 30)
                        except subprocess.TimeoutExpired:
                            att.kill()
                            att.wait()
                    _, st = inst.get_json("/stats")
                    _, dr = inst.get_json("/drain?v=%s" % variant)
                    tag = "%s_n%d" % (cell, n)
                    if errs:
                        say("round %d %s: %d errors, first: %s" % (r, tag, errs, first))
                        emit("ngx_err_" + tag, errs)
                    if not reqs or elapsed <= 0:
                        continue
                    lat.sort()
                    qps = reqs * a.k / elapsed
                    emit("ngx_round_" + tag, r)
                    emit("ngx_qps_" + tag, qps)
                    emit("ngx_rps_" + tag, reqs / elapsed)
                    emit("ngx_p50_" + tag, st.get("p50_us", 0))
                    emit("ngx_p99_" + tag, st.get("p99_us", 0))
                    emit("ngx_req_p50_" + tag, pct(lat, 0.5) * 1e3)
                    emit("ngx_req_p99_" + tag, pct(lat, 0.99) * 1e3)
                    # The path check: the yielding path starts the I/O thread, the blocking one must not.
                    iot = 1 if (st.get("io_thread") is True or (wpid and has_io_thread(wpid))) else 0
                    emit("ngx_iothread_" + tag, iot)
                    if st.get("jobs") is not None:
                        emit("ngx_jobs_left_" + tag, st["jobs"])
                    cpu_q = cs_q = None
                    if p0 and p1 and st.get("queries"):
                        # /reset, /stats are outside the window; the load's requests all are inside it.
                        q = reqs * a.k
                        cpu_q = (p1[0] - p0[0]) / 1e3 / q
                        cs_q = ((p1[1] - p0[1]) + (p1[2] - p0[2])) / q
                        emit("ngx_cpu_us_per_q_" + tag, cpu_q)
                        emit("ngx_cs_per_q_" + tag, cs_q)
                        emit("ngx_threads_" + tag, p1[3])
                        emit("ngx_mcpu_us_per_q_" + tag, (m1 - m0) / 1e3 / q)
                    say("round %d %-16s %8.0f q/s  p50 %7.1f us  p99 %8.1f us  req p99 %7.1f ms  io thread %s  "
                        "jobs left %s  worker CPU/q %s us  ctx sw/q %s  (drained %s)" % (
                            r, tag, qps, st.get("p50_us", 0), st.get("p99_us", 0), pct(lat, 0.99) * 1e3,
                            "yes" if iot else "no", st.get("jobs", "n/a"),
                            "n/a" if cpu_q is None else "%.1f" % cpu_q, "n/a" if cs_q is None else "%.2f" % cs_q,
                            dr.get("closed")))
                if n in cyc_ns:
                    if time.monotonic() - t_begin > HARD_LIMIT_S:
                        raise RuntimeError("time limit (%d s) reached" % HARD_LIMIT_S)
                    # The yielding instance's cells interleaved in one window
                    # (their differences are a few percent, below the drift
                    # between cells run one after another); a blocking cell
                    # (other instance) alone, as the query cells.
                    together = [(cell, variant) for cell, iname, variant in cyc_cells if iname == "yield"]
                    if together and not a.attach:
                        cycle_round(cyc_insts, r, n, together, cyc_secs, cyc_warm, a.cyc_slice)
                    for cell, iname, variant in cyc_cells[::step]:
                        if iname == "yield" and together and not a.attach:
                            continue
                        if time.monotonic() - t_begin > HARD_LIMIT_S:
                            raise RuntimeError("time limit (%d s) reached" % HARD_LIMIT_S)
                        cycle_cell(insts[iname], r, n, cell, variant, cyc_secs, cyc_warm, a.attach)
            if dec_cells:
                decode_round(insts, r, dec_cells, a.dec_k, last=(r == a.rounds))
            for name, inst in insts.items():
                wpid = inst.worker_pid()
                p0 = proc_sample(wpid) if wpid else None
                status, nop = inst.get_json("/nop?n=%d" % a.nop_calls)
                p1 = proc_sample(wpid) if wpid else None
                if status != 200 or nop.get("missing"):
                    if r == 1:
                        say("%s: rds._nop() %s" % (name, "missing" if nop.get("missing") else "failed: %s" % nop))
                    continue
                emit("ngx_nop_%s" % name, nop["p50_us"])
                emit("ngx_nop_p99_%s" % name, nop["p99_us"])
                emit("ngx_nop_wall_%s" % name, nop["wall_per_call_us"])
                cs_call = cpu_call = None
                if p0 and p1:  # the handler's 200 warm-up calls are in it too
                    calls = a.nop_calls + 200
                    cpu_call = (p1[0] - p0[0]) / 1e3 / calls
                    cs_call = ((p1[1] - p0[1]) + (p1[2] - p0[2])) / calls
                    emit("ngx_nop_cpu_us_%s" % name, cpu_call)
                    emit("ngx_nop_cs_%s" % name, cs_call)
                say("round %d nop %-5s median %.2f us  p99 %.2f us  wall/call %.2f us  worker CPU/call %s us  "
                    "ctx sw/call %s  io_thread %s" % (
                        r, name, nop["p50_us"], nop["p99_us"], nop["wall_per_call_us"],
                        "n/a" if cpu_call is None else "%.2f" % cpu_call, "n/a" if cs_call is None else "%.2f" % cs_call,
                        nop.get("io_thread")))
        if a.ir_n > 0 and cyc_ns:
            instruction_counts(a.prefix, so_dir, pgmoon_dir, a.ir_n)
        # After the work: which instance runs the I/O thread (started by the first yielding call).
        for name, inst in insts.items():
            _, info = inst.get_json("/info")
            wpid = inst.worker_pid()
            on = info.get("io_thread") is True or bool(wpid and has_io_thread(wpid))
            emit("meta_ngx_%s_io_thread" % name, "yes" if on else "no")
            say("%s instance after the run: rds.stats() = %s, I/O thread %s" % (
                name, json.dumps(info.get("stats"), sort_keys=True), "present" if on else "absent"))
    finally:
        for name, inst in list(insts.items()) + list(cyc_insts.items()):
            log = inst.error_log()
            inst.stop()
            bad = [l for l in log.splitlines() if "[error]" in l or "[alert]" in l or "[crit]" in l or "[emerg]" in l]
            if bad:
                say("%s error.log: %d error lines, last: %s" % (name, len(bad), bad[-1][:400]))


if __name__ == "__main__":
    main()
