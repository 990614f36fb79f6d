"""Fake AWS credential endpoints for kong_rds_iam tests (Python 3 stdlib only).

The command line (arguments, start-up JSON) and the process lifetime: serve
until a signal, POST /shutdown, EOF on stdin or the exit of the parent.
"""

import argparse
import json
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading

from .common import ACCOUNT_ID, write_private
from .container import ECS_PATHS, EcsService
from .control import ControlService
from .credentials import CredentialIssuer, registrar_for
from .imds import ImdsService
from .server import LOCALHOST, FakeServer
from .sts import StsService
from .world import World


def process_start_time(pid):
    """Start time of a process (field 22 of /proc/PID/stat), or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except OSError:
        return None
    return data.rsplit(")", 1)[1].split()[19]


def watch_parent(pid, stop_event):
    """Set stop_event when process `pid` exits (pid reuse safe)."""
    started = process_start_time(pid)

    def loop():
        while not stop_event.wait(0.5):
            if process_start_time(pid) != started:
                stop_event.set()
    threading.Thread(target=loop, name="parent-watch", daemon=True).start()


def watch_stdin(stop_event):
    """Set stop_event at EOF on stdin, if stdin is a pipe or a socket."""
    try:
        mode = os.fstat(0).st_mode
    except OSError:
        return
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return

    def loop():
        try:
            while os.read(0, 65536):
                pass
        except OSError:
            pass
        stop_event.set()
    threading.Thread(target=loop, name="stdin-watch", daemon=True).start()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--emulator-dir", help="RDS emulator directory: register issued keys there")
    p.add_argument("--register-cmd",
                   help="command prefix run as PREFIX AKID SECRET TOKEN --expires TS "
                        "(default with --emulator-dir: rds-emulator add-key DIR)")
    p.add_argument("--state-dir", help="where token files and credentials.jsonl go "
                                       "(default: a new temporary directory)")
    p.add_argument("--lifetime", type=float, default=3600, help="credential lifetime, s")
    p.add_argument("--region", default="us-east-1", help="IMDS region")
    p.add_argument("--role-name", default="kong-rds-role", help="IMDS/ECS role name")
    p.add_argument("--static-key", action="append", default=[], metavar="AKID:SECRET",
                   help="extra secret the STS SigV4 verifier knows (repeatable)")
    p.add_argument("--sts-auth", choices=("lenient", "strict"), default="lenient",
                   help="strict: reject AssumeRole by unknown access keys")
    p.add_argument("--parent-pid", type=int, default=None,
                   help="exit when this process exits (default: our parent; 0: never)")
    p.add_argument("--ready-file", help="also write the start-up JSON here (atomically)")
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = p.parse_args(argv)
    args.owns_state_dir = args.state_dir is None
    if args.owns_state_dir:
        args.state_dir = tempfile.mkdtemp(prefix="fake_aws.")
    os.makedirs(args.state_dir, exist_ok=True)
    args.state_dir = os.path.abspath(args.state_dir)
    return args


def start_info(world, servers, control):
    base = {name: "http://%s:%d" % (LOCALHOST, srv.port) for name, srv in servers.items()}
    return {
        "pid": os.getpid(),
        "imds_url": base["imds"],
        "ecs_url": base["ecs"] + ECS_PATHS[0],
        "eks_url": base["ecs"] + ECS_PATHS[1],
        "sts_url": base["sts"],
        "control_url": "http://%s:%d" % (LOCALHOST, control.port),
        "ports": dict({n: s.port for n, s in servers.items()}, control=control.port),
        "web_identity_token_file": world.web_identity_token_file,
        "web_identity_token": world.web_identity_token,
        "container_token": world.container_token,
        "container_token_file": world.container_token_file,
        "container_file_token": world.container_file_token,
        "role_name": world.role_name,
        "role_arn": world.role_arn,
        "region": world.region,
        "lifetime": world.args.lifetime,
        "account_id": ACCOUNT_ID,
        "state_dir": world.state_dir,
        "credentials_log": world.issuer.jsonl_path,
    }


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    issuer = CredentialIssuer(os.path.join(args.state_dir, "credentials.jsonl"),
                              registrar_for(args))
    world = World(args, issuer)
    stop = threading.Event()
    servers = {"imds": FakeServer(ImdsService(world)),
               "ecs": FakeServer(EcsService(world)),
               "sts": FakeServer(StsService(world))}
    control_service = ControlService(world, None, stop)
    control = FakeServer(control_service)
    control_service.info = info = start_info(world, servers, control)
    all_servers = list(servers.values()) + [control]
    for srv in all_servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    parent = os.getppid() if args.parent_pid is None else args.parent_pid
    if parent > 1:
        watch_parent(parent, stop)
    watch_stdin(stop)

    line = json.dumps(info)
    if args.ready_file:
        write_private(args.ready_file, line + "\n")
    try:
        print(line, flush=True)
    except BrokenPipeError:
        pass
    while not stop.wait(0.2):
        pass
    for srv in all_servers:     # serving threads are daemons: just stop listening
        srv.server_close()
    if args.owns_state_dir:
        shutil.rmtree(args.state_dir, ignore_errors=True)
    return 0
