"""``potline hash-password``: print the scrypt hash of a new operator password for the config.

On a terminal it asks twice (not echoed); otherwise it reads the password from the first
line of standard input, so provisioning scripts can pipe it in::

    printf '%s\\n' "$OPERATOR_PW" | potline hash-password

The printed ``scrypt$n$r$p$salt$hash`` goes into ``[opcua.security.users.<name>]
password_hash`` (the mirror, the HMI and a rig PLC check logins against it). Exit status
0 with the hash on stdout; 1 with the reason on stderr (the two entries differ, empty
input, end of input before a line).
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stdin",
        action="store_true",
        help="read the password from the first line of standard input even on a terminal",
    )


def main(args: argparse.Namespace) -> int:
    from plc_bridge.opcua_security import hash_password, read_new_password

    try:
        pw = read_new_password(sys.stdin, interactive=False if args.stdin else None)
    except (ValueError, EOFError, KeyboardInterrupt) as exc:
        print(f"potline hash-password: {exc or 'cancelled'}", file=sys.stderr)
        return 1
    print(hash_password(pw))
    return 0
