"""The Entra ID side of the emulator: the token endpoint, the OpenID configuration and the signing keys.

* Partner Center tokens are opaque (``emu-...``); the sandbox keeps them with their expiry, and
  ``POST /_emulator/revoke-tokens`` forgets them (as after a secret rotation or an emulator restart).
* Storage tokens: a client-credentials request for ``https://storage.azure.com/.default`` gets a JWT shaped like
  Entra ID's v1 app tokens for Azure Storage (``iss`` ``https://sts.windows.net/<tenant>/``, ``aud``
  ``https://storage.azure.com``, ``tid``, ``oid``, ``appid``, ``iat``/``nbf``/``exp``), RS256-signed with a key made
  at start (its JWKS at the ``jwks_uri`` of the OpenID configuration). Azurite's ``--oauth basic`` accepts it. Either
  the partner's app registration or the storage identity (seed ``storageIdentity``, default
  ``DEFAULT_STORAGE_IDENTITY``; storage tokens only) may ask for one. Partner Center never accepts them, and
  ``revoke-tokens`` cannot reach them (Azurite keeps accepting a storage token until its ``exp``).

Entra ID answers in its own shapes (``error`` and ``error_description``), never a BOM.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from tools.pc_emulator.exceptions import Answer

if TYPE_CHECKING:
    from tools.pc_emulator.responses import Request

#: The storage scope and the claims of a storage token (Entra ID v1 app tokens, as Azure Storage gets them).
STORAGE_SCOPE = "https://storage.azure.com/.default"
STORAGE_AUDIENCE = "https://storage.azure.com"
#: The second app registration of the emulated tenant, for identity-based storage only (a seed's ``storageIdentity``
#: replaces it). Development values, not a secret of anything real.
DEFAULT_STORAGE_IDENTITY = {
    "clientId": "7c8d9e0f-1a2b-4c3d-8e4f-5a6b7c8d9e0f",
    "clientSecret": "local-emulator-storage-secret-not-a-real-one",
}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class TokenSigner:
    """An RSA key made at start: storage tokens are RS256 JWTs with its ``kid``, verifiable with ``jwks()``."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = secrets.token_hex(8)

    def sign(self, claims: dict[str, Any]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        header = {"typ": "JWT", "alg": "RS256", "kid": self.kid}
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = self.key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(signature)

    def jwks(self) -> dict[str, Any]:
        numbers = self.key.public_key().public_numbers()

        def b64int(n: int) -> str:
            return _b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))

        return {
            "keys": [
                {
                    "kty": "RSA",
                    "use": "sig",
                    "alg": "RS256",
                    "kid": self.kid,
                    "n": b64int(numbers.n),
                    "e": b64int(numbers.e),
                }
            ]
        }


def storage_token_claims(tenant_id: str, client_id: str, now: float, lifetime: int) -> dict[str, Any]:
    """What Azurite's basic OAuth checks (iss prefix, aud, iat/nbf/exp) plus the usual app-token claims."""
    oid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"pc-emulator:service-principal:{client_id.lower()}"))
    issued = int(now)
    return {
        "aud": STORAGE_AUDIENCE,
        "iss": f"https://sts.windows.net/{tenant_id}/",
        "iat": issued,
        "nbf": issued,
        "exp": issued + lifetime,
        "appid": client_id,
        "appidacr": "1",
        "idp": f"https://sts.windows.net/{tenant_id}/",
        "idtyp": "app",
        "oid": oid,
        "sub": oid,
        "tid": tenant_id,
        "uti": secrets.token_urlsafe(16),
        "ver": "1.0",
    }


def is_identity(path: str) -> bool:
    """The Entra ID side (token endpoint, OpenID configuration, signing keys): no BOM, no Partner Center auth."""
    return (
        "/oauth2/" in path
        or "/.well-known/" in path
        or re.fullmatch(r"/[^/]+/discovery/(v2\.0/)?keys", path) is not None
    )


def _oauth_error(status: int, error: str, description: str) -> Answer:
    return status, {"error": error, "error_description": description}, {}


def openid_configuration(req: Request, tenant: str) -> Answer:
    base = f"https://{req.headers.get('Host')}"
    return (
        200,
        {
            "issuer": f"{base}/{tenant}/v2.0",
            "token_endpoint": f"{base}/{tenant}/oauth2/v2.0/token",
            "authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/authorize",
            "jwks_uri": f"{base}/{tenant}/discovery/v2.0/keys",
            "response_types_supported": ["code", "token"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "tenant_region_scope": "NA",
        },
        {},
    )


def signing_keys(req: Request, tenant: str) -> Answer:
    return 200, req.sandbox.signer.jwks(), {}


def token(req: Request, tenant: str) -> Answer:
    """Client credentials only: a Partner Center token for the partner's app, a storage token (``STORAGE_SCOPE``)
    for it or for the storage identity."""
    sandbox = req.sandbox
    form = {k: v[0] for k, v in parse_qs(req.raw.decode("utf-8", "replace")).items()}
    partner, storage = sandbox.partner, sandbox.storage_identity
    if tenant.lower() != str(partner.get("tenantId", "")).lower():
        return _oauth_error(400, "invalid_tenant", "AADSTS90002: Tenant not found.")
    if form.get("grant_type") != "client_credentials":
        return _oauth_error(400, "unsupported_grant_type", "AADSTS70003: only client_credentials")
    client = next((app for app in (partner, storage) if form.get("client_id") == app.get("clientId")), None)
    if client is None or form.get("client_secret") != client.get("clientSecret"):
        return _oauth_error(401, "invalid_client", "AADSTS7000215: Invalid client secret provided.")
    lifetime = int(sandbox.knobs["tokenLifetimeSeconds"])
    if STORAGE_SCOPE in (form.get("scope") or "").split():
        issued = sandbox.signer.sign(
            storage_token_claims(str(partner["tenantId"]), client["clientId"], time.time(), lifetime)
        )
    elif client is storage:
        return _oauth_error(400, "invalid_scope", "AADSTS70011: the storage identity gets storage tokens only.")
    else:
        issued = sandbox.issue_token(lifetime)
    return (
        200,
        {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": issued},
        {},
    )
