"""Restate request identity keys: an ed25519 pair the server signs with and the agent endpoint checks.

`python -m deploy.request_identity DIR` writes `DIR/restate-request-identity.pem` (the server's
private key: RESTATE_WORKER__INVOKER__REQUEST_IDENTITY_PRIVATE_KEY_PEM_FILE) and prints the
`publickeyv1_...` form the agent service takes in RESTATE_IDENTITY_PUBLIC_KEYS: `publickeyv1_`
and the base58 (Bitcoin alphabet) of the raw 32-byte public key (restate-notes §1.10). The stack
and the demo make a fresh pair per run. Uses the `openssl` command line (OpenSSL 1.1.1 or newer).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

PEM_NAME = "restate-request-identity.pem"
PUBLIC_KEY_PREFIX = "publickeyv1_"
SERVER_KEY_VARIABLE = "RESTATE_WORKER__INVOKER__REQUEST_IDENTITY_PRIVATE_KEY_PEM_FILE"
_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
ED25519_PUBLIC_KEY_BYTES = 32


def base58(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    digits = ""
    while number:
        number, remainder = divmod(number, 58)
        digits = _BASE58[remainder] + digits
    leading_zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * leading_zeros + digits


def public_key_of(pem: Path) -> str:
    """The `publickeyv1_...` key of the private key in `pem`."""
    der = subprocess.run(
        ["openssl", "pkey", "-in", str(pem), "-pubout", "-outform", "DER"], capture_output=True, check=True
    ).stdout
    # A DER SubjectPublicKeyInfo of an ed25519 key ends with the raw 32-byte key.
    return PUBLIC_KEY_PREFIX + base58(der[-ED25519_PUBLIC_KEY_BYTES:])


def generate(directory: Path) -> tuple[Path, str]:
    """A new key pair: the private key's PEM file (mode 0600) and its public key."""
    directory.mkdir(parents=True, exist_ok=True)
    pem = directory / PEM_NAME
    pem.unlink(missing_ok=True)
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(pem)], capture_output=True, check=True
    )
    os.chmod(pem, 0o600)
    return pem, public_key_of(pem)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.request_identity", description=__doc__)
    parser.add_argument("directory", type=Path, help="where to write the private key")
    args = parser.parse_args(argv)
    pem, public_key = generate(args.directory)
    sys.stdout.write(f"{SERVER_KEY_VARIABLE}={pem.resolve()}\nRESTATE_IDENTITY_PUBLIC_KEYS={public_key}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
