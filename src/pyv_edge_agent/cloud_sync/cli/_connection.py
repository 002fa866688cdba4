"""The ``flush`` options that say how to reach a real cloud: a client certificate, a token
file or OAuth2 client credentials, and a proxy. Secrets (the key password, the client
secret, proxy credentials) come only from files or the environment, never from the
command line, where ``ps`` and shell history would show them."""

import argparse
import os
from typing import Any, Dict, Optional
from urllib.parse import quote

from ..delivery.http.credentials import OAuth2ClientCredentials, TokenFileCredentials

# The environment variables read by default (their names can be changed by options).
KEY_PASSWORD_ENV = "CLOUD_SYNC_KEY_PASSWORD"
CLIENT_SECRET_ENV = "CLOUD_SYNC_OAUTH_CLIENT_SECRET"


class ConnectionUsageError(ValueError):
    """The connection options do not fit together (exits 2, like other usage errors)."""


def add_arguments(flush: argparse.ArgumentParser) -> None:
    """Add the certificate, token, OAuth2 and proxy options to the ``flush`` parser."""
    tls = flush.add_argument_group("mutual TLS (AWS IoT Core and the like)")
    tls.add_argument("--client-cert", help="PEM file of the client certificate (re-read when it changes)")
    tls.add_argument("--client-key", help="PEM file of its private key, if not in --client-cert")
    tls.add_argument("--client-key-password-file", help="a file holding the password of an encrypted key")
    tls.add_argument(
        "--client-key-password-env",
        default=KEY_PASSWORD_ENV,
        help=f"environment variable holding that password, if set (default {KEY_PASSWORD_ENV})",
    )
    tokens = flush.add_argument_group("changing credentials (instead of an API key)")
    tokens.add_argument("--token-file", help="a file holding a bearer token, re-read when it changes")
    tokens.add_argument("--oauth-token-url", help="OAuth2 client credentials: the token endpoint")
    tokens.add_argument("--oauth-client-id", help="OAuth2: the client id")
    tokens.add_argument("--oauth-client-secret-file", help="OAuth2: a file holding the client secret")
    tokens.add_argument(
        "--oauth-client-secret-env",
        default=CLIENT_SECRET_ENV,
        help=f"OAuth2: environment variable holding the client secret (default {CLIENT_SECRET_ENV})",
    )
    tokens.add_argument("--oauth-scope", help="OAuth2: the scopes to ask for")
    tokens.add_argument("--oauth-audience", help="OAuth2: the audience parameter")
    tokens.add_argument("--oauth-client-auth", choices=("basic", "post"), default="basic", help="default basic")
    proxy = flush.add_argument_group("proxy")
    proxy.add_argument(
        "--proxy",
        help="an http://host:port proxy; credentials only from --proxy-credentials-file or HTTPS_PROXY",
    )
    proxy.add_argument("--proxy-credentials-file", help="a file holding user:password for --proxy")
    proxy.add_argument("--no-proxy-env", action="store_true", help="ignore HTTPS_PROXY, HTTP_PROXY and NO_PROXY")


def read_secret_file(path: str, option: str) -> str:
    """A secret kept in a file of one line: the newline an editor or ``echo`` ends it with is
    not part of it, and a second line is refused rather than sent."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConnectionUsageError(f"{option}: cannot read {path!r} ({type(exc).__name__})") from None
    text = text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
    if "\n" in text or "\r" in text:
        raise ConnectionUsageError(f"{option}: {path!r} has more than one line; give the secret alone")
    if not text:
        raise ConnectionUsageError(f"{option}: {path!r} is empty")
    return text


def credentials(args: argparse.Namespace) -> Optional[Any]:
    """The credentials object the options ask for (a token file or OAuth2), or None."""
    oauth = args.oauth_token_url is not None or args.oauth_client_id is not None
    if args.token_file is not None and oauth:
        raise ConnectionUsageError("give --token-file or the --oauth-* options, not both")
    if args.token_file is not None:
        return TokenFileCredentials(args.token_file)
    if not oauth:
        return None
    if args.oauth_token_url is None or args.oauth_client_id is None:
        raise ConnectionUsageError("OAuth2 needs both --oauth-token-url and --oauth-client-id")
    secret: Dict[str, Any] = {}
    if args.oauth_client_secret_file is not None:
        secret["client_secret_file"] = args.oauth_client_secret_file
    else:
        value = os.environ.get(args.oauth_client_secret_env, "").strip()
        if not value:
            raise ConnectionUsageError(
                f"OAuth2 needs a client secret: set {args.oauth_client_secret_env} or use --oauth-client-secret-file"
            )
        secret["client_secret"] = value
    return OAuth2ClientCredentials(
        args.oauth_token_url,
        args.oauth_client_id,
        scope=args.oauth_scope,
        audience=args.oauth_audience,
        client_auth=args.oauth_client_auth,
        **secret,
    )


def uploader_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The ``HTTPCloudUploader`` keywords for the certificate and proxy options."""
    options: Dict[str, Any] = {"trust_env": not args.no_proxy_env}
    if args.client_cert is not None:
        options.update(client_cert=args.client_cert, client_key=args.client_key)
        if args.client_key_password_file is not None:
            options["key_password"] = read_secret_file(args.client_key_password_file, "--client-key-password-file")
        elif os.environ.get(args.client_key_password_env):
            options["key_password"] = os.environ[args.client_key_password_env]
    elif args.client_key is not None:
        raise ConnectionUsageError("--client-key needs --client-cert")
    if args.proxy is not None:
        if "@" in args.proxy:
            raise ConnectionUsageError(
                "--proxy takes no user:password (the command line is visible to ps); "
                "use --proxy-credentials-file or HTTPS_PROXY"
            )
        proxy = args.proxy if "://" in args.proxy else "http://" + args.proxy
        if args.proxy_credentials_file is not None:
            login = read_secret_file(args.proxy_credentials_file, "--proxy-credentials-file")
            user, colon, password = login.partition(":")
            scheme, _, rest = proxy.partition("://")
            proxy = f"{scheme}://{quote(user, safe='')}{colon}{quote(password, safe='')}@{rest}"
        options["proxy_url"] = proxy
    elif args.proxy_credentials_file is not None:
        raise ConnectionUsageError("--proxy-credentials-file needs --proxy")
    return options


def wants_api_key(args: argparse.Namespace, has_credentials: bool) -> bool:
    """Whether the flush needs an API key: not with changing credentials, and with a client
    certificate only if one is given (AWS IoT Core authenticates by the certificate alone)."""
    if has_credentials:
        return False
    if args.client_cert is not None:
        return bool(args.api_key_file or os.environ.get(args.api_key_env, "").strip())
    return True
