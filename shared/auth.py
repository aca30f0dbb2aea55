"""Credentials, chosen from the settings once per process. Nothing here asks for a token."""

from __future__ import annotations

from typing import Any

from azure.identity import (
    CertificateCredential,
    ClientSecretCredential,
    DefaultAzureCredential,
    ManagedIdentityCredential,
)

from shared.config import (
    TOKEN_CONNECT_SECONDS,
    TOKEN_READ_SECONDS,
    TOKEN_RETRIES,
    Settings,
    StorageConnection,
    is_known_authority,
)

__all__ = ["partner_center_credential", "storage_credential"]


def _token_endpoint_options(authority_host: str, *, app_credential: bool) -> dict[str, Any]:
    """The authority, short timeouts and one retry at the token endpoint (azure-core's defaults wait for minutes). An
    app credential (secret or certificate) of a private or emulated authority gets no instance discovery: it would
    call login.microsoftonline.com."""
    kwargs: dict[str, Any] = {
        "authority": authority_host,
        "connection_timeout": TOKEN_CONNECT_SECONDS,
        "read_timeout": TOKEN_READ_SECONDS,
        "retry_total": TOKEN_RETRIES,
    }
    if app_credential and not is_known_authority(authority_host):
        kwargs["disable_instance_discovery"] = True
    return kwargs


_PARTNER_CENTER_NAMES = ("PARTNER_CENTER_TENANT_ID", "PARTNER_CENTER_CLIENT_ID")
_STORAGE_NAMES = ("AzureWebJobsStorage__tenantId", "AzureWebJobsStorage__clientId")


def _app_identity(tenant_id: str | None, client_id: str | None, names: tuple[str, str]) -> tuple[str, str]:
    """The tenant and client of an app credential. The settings refuse one without them at start-up; if that check
    were ever bypassed, this refuses too instead of asking a token endpoint with a guess."""
    if not tenant_id or not client_id:
        raise ValueError(f"an app credential needs {names[0]} and {names[1]}")
    return tenant_id, client_id


def partner_center_credential(settings: Settings) -> Any:
    """App-only credential of the sandbox partner's app registration; none configured: DefaultAzureCredential.

    The token endpoint gets short timeouts and one retry (azure-core's defaults wait for minutes): a token is part of
    a call, and a call must fit into an invocation's work budget (``shared.workflow``, the settle time).
    """
    app_credential = bool(settings.client_secret or settings.client_certificate_path)
    kwargs = _token_endpoint_options(settings.authority_host, app_credential=app_credential)
    if settings.client_secret:
        tenant, client = _app_identity(settings.tenant_id, settings.client_id, _PARTNER_CENTER_NAMES)
        return ClientSecretCredential(tenant, client, settings.client_secret, **kwargs)
    if settings.client_certificate_path:
        tenant, client = _app_identity(settings.tenant_id, settings.client_id, _PARTNER_CENTER_NAMES)
        return CertificateCredential(tenant, client, certificate_path=settings.client_certificate_path, **kwargs)
    return DefaultAzureCredential(exclude_interactive_browser_credential=True, **kwargs)


def storage_credential(storage: StorageConnection) -> Any:
    """For an identity-based AzureWebJobsStorage, with the host's precedence (its setting names, ``shared.config``):

    ``__credential=managedidentity``: ManagedIdentityCredential (the user-assigned one of ``__clientId``, if given);
    ``__tenantId`` + ``__clientId`` + ``__clientSecret`` (local development): ClientSecretCredential against
    AZURE_AUTHORITY_HOST; ``__clientId`` alone: that user-assigned managed identity; nothing: DefaultAzureCredential.
    """
    if storage.use_managed_identity or (storage.client_id and not storage.client_secret):
        return (
            ManagedIdentityCredential(client_id=storage.client_id) if storage.client_id else ManagedIdentityCredential()
        )
    if storage.uses_client_secret and storage.client_secret:
        tenant, client = _app_identity(storage.tenant_id, storage.client_id, _STORAGE_NAMES)
        return ClientSecretCredential(
            tenant,
            client,
            storage.client_secret,
            **_token_endpoint_options(storage.authority_host, app_credential=True),
        )
    return DefaultAzureCredential(exclude_interactive_browser_credential=True)
