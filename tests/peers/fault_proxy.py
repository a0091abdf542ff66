"""The fault-injecting AWS proxy lives in ``jupiterd.sandbox.peers.fault_proxy``
(the sandbox's AWS front); re-exported here for the tests and benches that
import it or run it as a script."""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: find the jupiterd package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from jupiterd.sandbox.peers.fault_proxy import (
    DEFAULT_SPARED,
    Fault,
    FaultProxy,
    classify,
    denied_response,
    error_response,
    form_fields,
    main,
    mutating,
    server_error_response,
    throttle_response,
)

__all__ = [
    "DEFAULT_SPARED",
    "Fault",
    "FaultProxy",
    "classify",
    "denied_response",
    "error_response",
    "form_fields",
    "main",
    "mutating",
    "server_error_response",
    "throttle_response",
]

if __name__ == "__main__":
    sys.exit(main())
