"""Each ``[destinations.NAME]`` table made into its uploader. Building one opens no
connection, so ``check-config`` builds them all to let their own checks name a bad value."""

from typing import Any, Dict

from .._upload_types import Uploader
from ..delivery.http.credentials import OAuth2ClientCredentials, TokenFileCredentials
from ..delivery.http.uploader import HTTPCloudUploader
from .config import ConfigError, DestinationConfig, ServiceConfig


def build_uploaders(config: ServiceConfig) -> Dict[str, Uploader]:
    """One uploader per destination; a value an uploader refuses is a ``ConfigError``
    naming the destination (the uploader's message names the key, never a secret)."""
    return {name: _build(config.path, destination) for name, destination in config.destinations.items()}


def _build(path: str, destination: DestinationConfig) -> Uploader:
    options: Dict[str, Any] = dict(destination.uploader)
    try:
        if destination.type == "mqtt":
            from ..delivery.mqtt.uploader import MQTTUploader

            return MQTTUploader(**options)
        token_file = options.pop("token_file", None)
        oauth2 = options.pop("oauth2", None)
        if token_file is not None:
            options["credentials"] = TokenFileCredentials(token_file)
        elif oauth2 is not None:
            options["credentials"] = OAuth2ClientCredentials(**oauth2)
        return HTTPCloudUploader(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: destinations.{destination.name}: {exc}") from None
