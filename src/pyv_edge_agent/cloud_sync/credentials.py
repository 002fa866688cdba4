"""Rotating credentials for ``HTTPCloudUploader``, where the documentation imports them
from; they live in ``delivery.http``."""

from .delivery.http.credentials import Credentials, OAuth2ClientCredentials, TokenFileCredentials

__all__ = ["Credentials", "OAuth2ClientCredentials", "TokenFileCredentials"]
