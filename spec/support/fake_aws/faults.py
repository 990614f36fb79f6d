"""Fault injection: the failure modes a service can be put in."""

import re

SIMPLE_MODES = ("ok", "timeout", "garbage", "expired", "refuse")
# The error Code of an injected status (others: InternalFailure).
ERROR_CODES = {400: "Throttling", 403: "AccessDenied", 404: "NotFound",
               503: "ServiceUnavailable"}


class Fault:
    """A failure mode for one service.

    mode: ok | timeout | garbage | expired | refuse | a 3-digit HTTP status.
    seconds: timeout delay, or how long ago `expired` credentials expired.
    path / action: only requests whose path starts with `path` (or STS
    requests with this Action) are affected.  count: affect only the next
    `count` matching requests, then go back to ok.
    """

    def __init__(self, mode="ok", seconds=None, path=None, action=None, count=None):
        if mode not in SIMPLE_MODES and not re.fullmatch(r"[1-5]\d\d", str(mode)):
            raise ValueError("unknown mode %r" % (mode,))
        self.mode = str(mode)
        default_seconds = 10 if mode == "timeout" else 60
        self.seconds = float(seconds) if seconds is not None else default_seconds
        self.path = path
        self.action = action
        self.count = int(count) if count is not None else None

    def matches(self, path, action):
        if self.mode == "ok" or self.count == 0:
            return False
        if self.path is not None and not path.startswith(self.path):
            return False
        return self.action is None or self.action == action

    def describe(self):
        return {"mode": self.mode, "seconds": self.seconds, "path": self.path,
                "action": self.action, "count": self.count}


OK = Fault()
