"""JSON control API: faults, lifetimes, settings, counts and the request log."""

import json
import urllib.parse

from .common import SERVICES
from .faults import Fault
from .imds import IMDS_TOKEN_POLICIES
from .server import Reply, json_bytes


class ControlService:
    """JSON control API (not counted in the request log).

    GET  /info /counts /requests[?service=S] /credentials
    POST /mode {service, mode, seconds?, path?, action?, count?, status?}
    POST /lifetime {seconds, service?}     POST /reuse {service, min_remaining}
    POST /reset {counts_only?}             POST /rotate_tokens
    POST /keys {akid, secret}              POST /imds {role_name?, region?, invalidate_tokens?}
    POST /ecs {require_auth}               POST /sts {auth: lenient|strict}
    POST /shutdown
    """

    name = "control"

    def __init__(self, world, info, stop_event):
        self.world = world
        self.info = info
        self.stop_event = stop_event

    def handle(self, req):
        try:
            data = json.loads(req.body or b"{}") if req.method == "POST" else {}
            route = self.routes().get((req.method, req.path))
            if route is None:
                return self.reply(404, {"error": "no route %s %s" % (req.method, req.path)})
            result = route(data, req)
            reply = self.reply(200, result)
            if req.path == "/shutdown":
                reply.after = self.stop_event.set
            return reply
        except (ValueError, KeyError, TypeError) as err:
            return self.reply(400, {"error": str(err)})

    def reply(self, status, obj):
        return Reply(status, json_bytes(obj), "application/json")

    def routes(self):
        return {
            ("GET", "/info"): lambda d, r: self.info,
            ("GET", "/counts"): lambda d, r: self.world.log.counts(),
            ("GET", "/requests"): self.requests,
            ("GET", "/credentials"): lambda d, r: self.world.issuer.records(),
            ("POST", "/mode"): self.set_mode,
            ("POST", "/lifetime"): self.set_lifetime,
            ("POST", "/reuse"): self.set_reuse,
            ("POST", "/reset"): self.reset,
            ("POST", "/rotate_tokens"): self.rotate_tokens,
            ("POST", "/keys"): self.add_key,
            ("POST", "/imds"): self.configure_imds,
            ("POST", "/ecs"): self.configure_ecs,
            ("POST", "/sts"): self.configure_sts,
            ("POST", "/shutdown"): self.shutdown,
        }

    def requests(self, data, req):
        service = urllib.parse.parse_qs(req.query).get("service", [None])[0]
        return self.world.log.entries(service)

    def set_mode(self, data, req):
        service, mode = data.get("service"), str(data.get("mode", "ok"))
        world = self.world
        if mode in IMDS_TOKEN_POLICIES:
            if service != "imds":
                raise ValueError("mode %s is for service imds" % mode)
            with world.lock:
                world.imds_token_policy = IMDS_TOKEN_POLICIES[mode]
                world.imds_token_forbidden_status = int(data.get("status") or 403)
            return {"imds_token_policy": world.imds_token_policy}
        fault = Fault(mode, data.get("seconds"), data.get("path"), data.get("action"),
                      data.get("count"))
        world.set_fault(service, fault)
        return {s: world.faults[s].describe() for s in SERVICES}

    def set_lifetime(self, data, req):
        self.world.set_lifetime(data["seconds"], data.get("service"))
        return self.world.lifetimes

    def set_reuse(self, data, req):
        self.world.set_reuse(data.get("service"), data.get("min_remaining"))
        return self.world.reuse

    def reset(self, data, req):
        self.world.log.reset()
        if not data.get("counts_only"):
            self.world.reset_settings()
        return {"ok": True}

    def rotate_tokens(self, data, req):
        self.world.rotate_tokens()
        return {"web_identity_token": self.world.web_identity_token,
                "container_file_token": self.world.container_file_token}

    def add_key(self, data, req):
        with self.world.lock:
            self.world.static_keys[data["akid"]] = data["secret"]
        return {"ok": True}

    def configure_imds(self, data, req):
        world = self.world
        with world.lock:
            if "role_name" in data:
                world.role_name = data["role_name"] or None
            if data.get("region"):
                world.region = data["region"]
            if data.get("invalidate_tokens"):
                world.imds_tokens.clear()
            return {"role_name": world.role_name, "region": world.region,
                    "token_policy": world.imds_token_policy}

    def configure_ecs(self, data, req):
        with self.world.lock:
            self.world.ecs_require_auth = bool(data.get("require_auth", True))
        return {"require_auth": self.world.ecs_require_auth}

    def configure_sts(self, data, req):
        auth = data.get("auth", "lenient")
        if auth not in ("lenient", "strict"):
            raise ValueError("auth must be lenient or strict")
        self.world.sts_auth = auth
        return {"auth": auth}

    def shutdown(self, data, req):
        return {"ok": True}     # handle() stops the process once this is sent
