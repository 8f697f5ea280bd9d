#!/usr/bin/env python3
"""Google Cloud KMS and Azure Key Vault on 127.0.0.1, as their REST references document
them, for Ferry's `gcp_kms` and `azure_key_vault` signing backends (no real peer runs
on a test machine). Keys are made at start with `cryptography`; the private keys never
leave this process.

Cloud KMS v1 (cloud.google.com/kms/docs/reference/rest):
  GET  /v1/{name=projects/*/locations/*/keyRings/*/cryptoKeys/*/cryptoKeyVersions/*}/publicKey
  POST /v1/{name=...}:asymmetricSign     {"digest": {"sha256": b64}, "digestCrc32c": "n"}
Key Vault 7.4 (learn.microsoft.com/rest/api/keyvault/keys):
  GET  /keys/{name}/{version}?api-version=7.4
  POST /keys/{name}/{version}/sign?api-version=7.4   {"alg": "RS256"|"ES256", "value": b64url}
Both answer errors in their documented shapes (google.rpc.Status; {"error": {"code",
"message"}}). A bearer token other than the one given is refused (401).

Usage: fake_key_managers.py PORT_FILE GCP_TOKEN AZURE_TOKEN
Writes the port to PORT_FILE, then serves until killed. GET /_fake/calls counts the sign
calls per API and the managed-identity tokens handed out by the instance metadata
service (GET /metadata/identity/oauth2/token, api-version 2018-02-01), which Key Vault's
managed-identity path asks."""

import base64
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

GCP_PREFIX = "projects/ferry-test/locations/global/keyRings/ferry/cryptoKeys/signing/cryptoKeyVersions/"
GCP = {
    GCP_PREFIX + "1": ("EC_SIGN_P256_SHA256", ec.generate_private_key(ec.SECP256R1())),
    GCP_PREFIX + "2": ("RSA_SIGN_PKCS1_2048_SHA256", rsa.generate_private_key(65537, 2048)),
}
AZURE = {
    ("ferry-rsa", "v1"): ("RSA-HSM", rsa.generate_private_key(65537, 2048)),
    ("ferry-ec", "v1"): ("EC-HSM", ec.generate_private_key(ec.SECP256R1())),
}
CALLS = {"gcp_sign": 0, "azure_sign": 0, "imds": 0}
LOCK = threading.Lock()


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64u_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def int_b64u(value, width=None):
    raw = value.to_bytes(width or (value.bit_length() + 7) // 8, "big")
    return b64u(raw)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def gcp_error(self, code, status, message):
        self.answer(code, {"error": {"code": code, "message": message, "status": status}})

    def azure_error(self, code, error, message):
        self.answer(code, {"error": {"code": error, "message": message}})

    def authorized(self, token):
        return self.headers.get("Authorization") == f"Bearer {token}"

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/_fake/calls":
            with LOCK:
                return self.answer(200, dict(CALLS))
        if url.path == "/metadata/identity/oauth2/token":
            # Azure's instance metadata service, managed identity (2018-02-01).
            query = parse_qs(url.query)
            if self.headers.get("Metadata") != "true" or query.get("api-version") != ["2018-02-01"]:
                return self.answer(400, {"error": "invalid_request", "error_description": "Required metadata header not specified"})
            if query.get("resource") != ["https://vault.azure.net"]:
                return self.answer(400, {"error": "invalid_resource", "error_description": "unexpected resource"})
            with LOCK:
                CALLS["imds"] += 1
            expires = int(time.time()) + 3600
            return self.answer(200, {
                "access_token": AZURE_TOKEN,
                "client_id": "00000000-0000-0000-0000-000000000000",
                "expires_in": "3600",
                "expires_on": str(expires),
                "ext_expires_in": "3600",
                "not_before": str(expires - 3600),
                "resource": "https://vault.azure.net",
                "token_type": "Bearer",
            })
        if url.path.startswith("/v1/") and url.path.endswith("/publicKey"):
            if not self.authorized(GCP_TOKEN):
                return self.gcp_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
            name = url.path[len("/v1/"):-len("/publicKey")]
            if name not in GCP:
                return self.gcp_error(404, "NOT_FOUND", f"{name} not found.")
            algorithm, key = GCP[name]
            pem = key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode()
            return self.answer(200, {
                "pem": pem,
                "algorithm": algorithm,
                "pemCrc32c": str(crc32c(pem.encode())),
                "name": name,
                "protectionLevel": "HSM",
            })
        parts = url.path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "keys":
            if parse_qs(url.query).get("api-version") != ["7.4"]:
                return self.azure_error(400, "BadParameter", "api-version is missing or unsupported")
            if not self.authorized(AZURE_TOKEN):
                return self.azure_error(401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.")
            entry = AZURE.get((parts[1], parts[2]))
            if entry is None:
                return self.azure_error(404, "KeyNotFound", f"A key with (name/id) {parts[1]} was not found in this key vault.")
            kty, key = entry
            kid = f"http://{self.headers['Host']}/keys/{parts[1]}/{parts[2]}"
            jwk = {"kid": kid, "kty": kty, "key_ops": ["sign", "verify"]}
            numbers = key.public_key().public_numbers()
            if kty.startswith("RSA"):
                jwk.update(n=int_b64u(numbers.n), e=int_b64u(numbers.e))
            else:
                jwk.update(crv="P-256", x=int_b64u(numbers.x, 32), y=int_b64u(numbers.y, 32))
            now = int(time.time())
            return self.answer(200, {
                "key": jwk,
                "attributes": {"enabled": True, "created": now, "updated": now, "recoveryLevel": "Recoverable+Purgeable"},
            })
        self.answer(404, {"error": {"code": "NotFound", "message": "no such path"}})

    def do_POST(self):
        url = urlsplit(self.path)
        if url.path.startswith("/v1/") and url.path.endswith(":asymmetricSign"):
            if not self.authorized(GCP_TOKEN):
                return self.gcp_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
            name = url.path[len("/v1/"):-len(":asymmetricSign")]
            if name not in GCP:
                return self.gcp_error(404, "NOT_FOUND", f"{name} not found.")
            request = self.body()
            digest = base64.b64decode(request.get("digest", {}).get("sha256", ""))
            if len(digest) != 32:
                return self.gcp_error(400, "INVALID_ARGUMENT", "digest.sha256 must be 32 bytes")
            if "digestCrc32c" in request and int(request["digestCrc32c"]) != crc32c(digest):
                return self.gcp_error(400, "INVALID_ARGUMENT", "The checksum in field digest_crc32c did not match the data in field digest.")
            algorithm, key = GCP[name]
            if algorithm.startswith("EC"):
                signature = key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
            else:
                signature = key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
            with LOCK:
                CALLS["gcp_sign"] += 1
            return self.answer(200, {
                "signature": base64.b64encode(signature).decode(),
                "signatureCrc32c": str(crc32c(signature)),
                "verifiedDigestCrc32c": "digestCrc32c" in request,
                "name": name,
                "protectionLevel": "HSM",
            })
        parts = url.path.strip("/").split("/")
        if len(parts) == 4 and parts[0] == "keys" and parts[3] == "sign":
            if parse_qs(url.query).get("api-version") != ["7.4"]:
                return self.azure_error(400, "BadParameter", "api-version is missing or unsupported")
            if not self.authorized(AZURE_TOKEN):
                return self.azure_error(401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.")
            entry = AZURE.get((parts[1], parts[2]))
            if entry is None:
                return self.azure_error(404, "KeyNotFound", f"A key with (name/id) {parts[1]} was not found in this key vault.")
            kty, key = entry
            request = self.body()
            digest = b64u_decode(request.get("value", ""))
            alg = request.get("alg")
            if len(digest) != 32 or alg != ("RS256" if kty.startswith("RSA") else "ES256"):
                return self.azure_error(400, "BadParameter", "Invalid alg or digest length")
            if kty.startswith("RSA"):
                signature = key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
            else:
                r, s = utils.decode_dss_signature(key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))))
                signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
            with LOCK:
                CALLS["azure_sign"] += 1
            kid = f"http://{self.headers['Host']}/keys/{parts[1]}/{parts[2]}"
            return self.answer(200, {"kid": kid, "value": b64u(signature)})
        self.answer(404, {"error": {"code": "NotFound", "message": "no such path"}})


PORT_FILE, GCP_TOKEN, AZURE_TOKEN = sys.argv[1], sys.argv[2], sys.argv[3]
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(PORT_FILE + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os

os.rename(PORT_FILE + ".tmp", PORT_FILE)
server.serve_forever()
