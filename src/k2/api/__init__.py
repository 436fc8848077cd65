"""The K2 HTTP API over the query library: `create_app`, `serve`, and API key management."""

from k2.api.app import create_app
from k2.api.keys import ApiKey, create_key, list_keys, revoke_key
from k2.api.server import serve
from k2.config import ApiSettings

__all__ = ["ApiKey", "ApiSettings", "create_app", "create_key", "list_keys", "revoke_key", "serve"]
