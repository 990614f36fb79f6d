"""Issuing temporary credentials and registering them with the RDS emulator."""

import base64
import json
import os
import secrets
import shlex
import string
import subprocess
import sys
import threading
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
EMULATOR_SCRIPT = os.path.join(REPO_ROOT, "tools", "rds-emulator", "rds-emulator")


def iso8601(ts):
    """Format a unix time as AWS does in credentials: YYYY-MM-DDTHH:MM:SSZ."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def random_chars(alphabet, n):
    return "".join(secrets.choice(alphabet) for _ in range(n))


def random_access_key_id():
    """Temporary key id: ASIA + 16 uppercase alphanumerics."""
    return "ASIA" + random_chars(string.ascii_uppercase + string.digits, 16)


def random_secret():
    return random_chars(string.ascii_letters + string.digits + "+/", 40)


def random_session_token():
    """Session token shaped like STS's: base64, 600-1000 chars, with + / =."""
    raw = b"\x21\x0a\x09origin_ec" + secrets.token_bytes(450 + secrets.randbelow(250))
    return base64.b64encode(raw).decode()


class Credential:
    """One issued temporary credential."""

    def __init__(self, service, role_arn, lifetime):
        self.service = service
        self.role_arn = role_arn
        self.access_key_id = random_access_key_id()
        self.secret_access_key = random_secret()
        self.session_token = random_session_token()
        self.issued_at = time.time()
        self.expiration = int(self.issued_at + lifetime)
        self.registered = None
        self.register_error = None

    @property
    def expiration_iso(self):
        return iso8601(self.expiration)

    def record(self):
        """JSON-serialisable view (secrets included: this is a test fake)."""
        return {
            "service": self.service,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "session_token": self.session_token,
            "expiration": self.expiration,
            "expiration_iso": self.expiration_iso,
            "issued_at": self.issued_at,
            "role_arn": self.role_arn,
            "registered": self.registered,
            "register_error": self.register_error,
        }


class Registrar:
    """Registers issued keys with the RDS emulator through a command.

    The command is `PREFIX AKID SECRET SESSION_TOKEN --expires UNIX_TS`; the
    default prefix is `tools/rds-emulator/rds-emulator add-key EMULATOR_DIR`.
    """

    def __init__(self, prefix):
        self.prefix = prefix

    def register(self, cred):
        if not self.prefix:
            return
        argv = self.prefix + [cred.access_key_id, cred.secret_access_key,
                              cred.session_token, "--expires", str(cred.expiration)]
        env = dict(os.environ, RDS_EMU_QUIET="1")
        try:
            res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                 text=True, timeout=60, env=env)
        except (OSError, subprocess.TimeoutExpired) as err:
            cred.registered, cred.register_error = False, str(err)
        else:
            cred.registered = res.returncode == 0
            if res.returncode != 0:
                cred.register_error = "exit %d: %s" % (res.returncode, res.stderr.strip())
        if cred.register_error:
            print("fake_aws: registering %s failed: %s"
                  % (cred.access_key_id, cred.register_error), file=sys.stderr, flush=True)


class CredentialIssuer:
    """Issues credentials, appends them to a JSON-lines file and registers them."""

    def __init__(self, jsonl_path, registrar):
        self.jsonl_path = jsonl_path
        self.registrar = registrar
        self._lock = threading.Lock()
        self._by_akid = {}

    def issue(self, service, role_arn, lifetime):
        cred = Credential(service, role_arn, lifetime)
        self.registrar.register(cred)
        with self._lock:
            self._by_akid[cred.access_key_id] = cred
            with open(self.jsonl_path, "a") as f:
                f.write(json.dumps(cred.record()) + "\n")
        return cred

    def lookup(self, akid):
        with self._lock:
            return self._by_akid.get(akid)

    def records(self):
        with self._lock:
            return [c.record() for c in self._by_akid.values()]


def read_emulator_keys(emulator_dir):
    if not emulator_dir:
        return {}
    try:
        with open(os.path.join(emulator_dir, "keys.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def registrar_for(args):
    if args.register_cmd:
        return Registrar(shlex.split(args.register_cmd))
    if args.emulator_dir:
        if not os.access(EMULATOR_SCRIPT, os.X_OK):
            sys.exit("fake_aws: %s not found; use --register-cmd" % EMULATOR_SCRIPT)
        return Registrar([EMULATOR_SCRIPT, "add-key", os.path.abspath(args.emulator_dir)])
    return Registrar(None)
