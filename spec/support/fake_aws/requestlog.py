"""The request log and per-service counters the control API reads."""

import json
import threading
import time

from .common import SERVICES


class RequestLog:
    """Thread-safe request log and counters."""

    def __init__(self):
        self._lock = threading.Lock()
        self._seq = 0
        self._entries = []
        self._counts = {}

    def record(self, service, req):
        entry = {
            "service": service, "time": time.time(), "method": req.method,
            "path": req.path, "query": req.query, "host": req.header("host"),
            "user_agent": req.header("user-agent"), "headers": req.header_dict(),
            "status": None, "mode": "ok",
        }
        with self._lock:
            self._seq += 1
            entry["seq"] = self._seq
            self._entries.append(entry)
            counts = self._counts.setdefault(service, {"total": 0})
            counts["total"] += 1
            counts[req.path] = counts.get(req.path, 0) + 1
        return entry

    def count_action(self, service, action):
        with self._lock:
            counts = self._counts.setdefault(service, {"total": 0})
            counts[action] = counts.get(action, 0) + 1

    def counts(self):
        with self._lock:
            result = {s: {"total": 0} for s in SERVICES}
            result.update(json.loads(json.dumps(self._counts)))
            return result

    def entries(self, service=None):
        with self._lock:
            return [dict(e) for e in self._entries
                    if service is None or e["service"] == service]

    def reset(self):
        with self._lock:
            self._entries = []
            self._counts = {}
