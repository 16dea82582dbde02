"""The credential every adapter uses."""

from __future__ import annotations

from azure.core.credentials import TokenCredential


def default_credential() -> TokenCredential:
    """DefaultAzureCredential: the Function app's managed identity in Azure, a developer's login elsewhere.

    Set AZURE_CLIENT_ID to pick a user-assigned identity. Interactive browser login is excluded: the app
    runs unattended.
    """
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(exclude_interactive_browser_credential=True)
