"""Fail fast when the Hugging Face hub cannot be reached, instead of a minute of retries."""
from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from .errors import UserError


def hub_reachable(timeout: float = 3.0) -> bool:
    """True if the hub endpoint accepts a TCP connection within `timeout` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    if not url.hostname:
        return False
    try:
        port = url.port or (80 if url.scheme == "http" else 443)
    except ValueError:  # a port that is not a number
        return False
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def unreachable(what: str, name: str, local_flag: str) -> UserError:
    return UserError(
        f"cannot fetch {what} '{name}': the Hugging Face hub is unreachable and it is not in the local cache; "
        f"pass a local directory instead with {local_flag}"
    )
