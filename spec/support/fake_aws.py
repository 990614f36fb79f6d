#!/usr/bin/env python3
"""Fake AWS credential endpoints for kong_rds_iam tests: the command.

The server is the package next to this file (spec/support/fake_aws/, one
module per concern); this is what spec/support/fake_aws.lua and
fake_aws_selftest.py run:

    python3 spec/support/fake_aws.py [--emulator-dir DIR] [--state-dir DIR]
        [--lifetime 3600] [--region us-east-1] [--ready-file PATH] ...

Prints one JSON line with URLs, ports and token files, then serves until
SIGTERM/SIGINT, POST /shutdown on the control port, EOF on stdin (when stdin is
a pipe or socket) or death of the parent process (--parent-pid, default: the
process that started us). See spec/support/README.md.
"""

import os
import sys

sys.dont_write_bytecode = True      # leave no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fake_aws.cli import main  # noqa: E402  (the package fake_aws/, not this file)

if __name__ == "__main__":
    sys.exit(main())
