#!/usr/bin/env python3
"""Verifies a compact JWS against a JWKS with the `cryptography` package alone: code that
shares nothing with Ferry's signer. Usage: verify_jwt.py JWKS_FILE TOKEN_FILE.
Prints `verified <kid> <alg>` and exits 0, or says why not and exits 1."""

import base64
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def b64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def number(text):
    return int.from_bytes(b64(text), "big")


def main():
    jwks = json.load(open(sys.argv[1]))
    token = open(sys.argv[2]).read().strip()
    head, body, signature = token.split(".")
    header = json.loads(b64(head))
    key = next((k for k in jwks["keys"] if k.get("kid") == header.get("kid")), None)
    if key is None:
        sys.exit(f"no key {header.get('kid')} in the JWKS")
    if key.get("alg") != header["alg"]:
        sys.exit(f"header alg {header['alg']} is not the key's {key.get('alg')}")
    message = f"{head}.{body}".encode()
    sig = b64(signature)
    try:
        if header["alg"] == "RS256":
            public = rsa.RSAPublicNumbers(number(key["e"]), number(key["n"])).public_key()
            public.verify(sig, message, padding.PKCS1v15(), hashes.SHA256())
        elif header["alg"] == "ES256":
            public = ec.EllipticCurvePublicNumbers(
                number(key["x"]), number(key["y"]), ec.SECP256R1()
            ).public_key()
            if len(sig) != 64:
                sys.exit(f"an ES256 signature is 64 bytes, not {len(sig)}")
            der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
            public.verify(der, message, ec.ECDSA(hashes.SHA256()))
        else:
            sys.exit(f"unexpected alg {header['alg']}")
    except InvalidSignature:
        sys.exit("the signature does not verify")
    print(f"verified {header['kid']} {header['alg']}")


main()
