"""Base of the faulty AWS endpoints (IMDS, ECS/EKS, STS)."""

import time

from .faults import ERROR_CODES
from .server import REFUSE, Reply, json_bytes


class Service:
    """Base for a faulty AWS endpoint: logging, counting, fault injection."""

    name = ""

    def __init__(self, world):
        self.world = world

    def handle(self, req):
        entry = self.world.log.record(self.name, req)
        self.inspect(req, entry)
        fault = self.world.take_fault(self.name, req.path, entry.get("action"))
        entry["mode"] = fault.mode
        if fault.mode == "refuse":
            return REFUSE
        if fault.mode == "timeout":
            time.sleep(fault.seconds)
        if fault.mode.isdigit():
            status = int(fault.mode)
            reply = self.error_reply(status, ERROR_CODES.get(status, "InternalFailure"),
                                     "injected failure (mode %s)" % fault.mode)
        elif fault.mode == "garbage":
            reply = Reply(200, self.garbage(req), self.content_type)
        else:
            reply = self.serve(req, entry, fault)
        entry["status"] = reply.status
        return reply

    # overridden by services
    content_type = "text/plain"

    def inspect(self, req, entry):
        """Parse the request and add service details to the log entry."""

    def serve(self, req, entry, fault):
        raise NotImplementedError

    def garbage(self, req):
        return b'{"Code" : "Success", "AccessKeyId" : "ASIA'

    def error_reply(self, status, code, message):
        return Reply(status, json_bytes({"code": code, "message": message}),
                     "application/json")
