"""Credentials, chosen from the settings once per process. Nothing here asks for a token."""
from __future__ import annotations

from typing import Any

from azure.identity import CertificateCredential, ClientSecretCredential, DefaultAzureCredential, ManagedIdentityCredential

from shared.config import TOKEN_CONNECT_SECONDS, TOKEN_READ_SECONDS, TOKEN_RETRIES, Settings, StorageConnection

__all__ = ["partner_center_credential", "storage_credential"]


def partner_center_credential(settings: Settings) -> Any:
    """App-only credential of the sandbox partner's app registration; none configured: DefaultAzureCredential.

    The token endpoint gets short timeouts and one retry (azure-core's defaults wait for minutes): a token is part of
    a call, and a call must fit into an invocation's work budget (``shared.workflow``, the settle time).
    """
    kwargs: dict[str, Any] = {"authority": settings.authority_host, "connection_timeout": TOKEN_CONNECT_SECONDS,
                              "read_timeout": TOKEN_READ_SECONDS, "retry_total": TOKEN_RETRIES}
    if settings.client_secret or settings.client_certificate_path:
        if not settings.authority_is_known_cloud:
            # A private or emulated authority: no instance discovery (it would call login.microsoftonline.com).
            kwargs["disable_instance_discovery"] = True
        if settings.client_secret:
            return ClientSecretCredential(settings.tenant_id, settings.client_id, settings.client_secret, **kwargs)
        return CertificateCredential(settings.tenant_id, settings.client_id, certificate_path=settings.client_certificate_path, **kwargs)
    return DefaultAzureCredential(exclude_interactive_browser_credential=True, **kwargs)


def storage_credential(storage: StorageConnection) -> Any:
    """For an identity-based AzureWebJobsStorage: the user-assigned identity when a client id is given."""
    if storage.client_id or storage.use_managed_identity:
        return ManagedIdentityCredential(client_id=storage.client_id) if storage.client_id else ManagedIdentityCredential()
    return DefaultAzureCredential(exclude_interactive_browser_credential=True)
