"""Constants and a file helper shared by the fake's modules."""

import os

ACCOUNT_ID = "123456789012"
SERVICES = ("imds", "ecs", "sts")


def write_private(path, text):
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
