"""Names on the Hub, and reaching it: which names are Hub ids and how local paths may be published
(light: the selection path imports it), and failing fast when the Hub cannot be reached, using the
local Hub cache then.

Without a network, huggingface_hub retries every request five times with a backoff of 1 + 2 + 4 + 8 + 8
seconds, and a model load makes several requests: close to a minute before the error. One bounded TCP
connect to the endpoint, made once per process, tells in a few seconds whether to go to the network at
all; when it fails, loads read the local Hub cache only (what HF_HUB_OFFLINE=1 does) and a miss is one
line. Offline mode skips the probe: the libraries then read the cache themselves.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from huggingface_hub import constants

from mprm_hf.errors import MPRMError

T = TypeVar("T")

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
"""`owner/name`: the shape of a Hub repository id."""


def hub_repo_id(value: str | os.PathLike[str] | None) -> str | None:
    """`value` when it names a Hub repository; None for local paths, which do not belong in metadata."""
    if value is None:
        return None
    text = str(value)
    if not REPO_ID.match(text) or Path(text).exists():
        return None
    return text


def portable_path(value: str | os.PathLike[str]) -> str:
    """A path as it may be published: a Hub id as it is, package data (the shipped tiny base) as
    `mprm_hf/...`, a path under the working folder relative to it, any other path of this disk by its last
    part only."""
    text = str(value)
    if hub_repo_id(text) or not os.path.isabs(text):
        return text
    resolved = Path(text).resolve()
    package = Path(__file__).resolve().parent
    if resolved.is_relative_to(package):
        return (Path(package.name) / resolved.relative_to(package)).as_posix()
    if resolved.is_relative_to(Path.cwd().resolve()):
        return resolved.relative_to(Path.cwd().resolve()).as_posix() or "."
    return resolved.name


# Seconds the probe may take, name resolution included: long enough for a slow but working link.
PROBE_TIMEOUT_S = 3.0


def _probe_address(endpoint: str) -> tuple[str, int]:
    """The host and port a request to `endpoint` connects to first: its proxy's when one is set."""
    parts = urlsplit(endpoint)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def _connects(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


@functools.cache
def endpoint_reachable(endpoint: str) -> bool:
    """Whether a TCP connection to `endpoint` opens within PROBE_TIMEOUT_S; asked once per process.

    The connect runs in a daemon thread, so a name lookup that hangs (which the socket timeout does not
    bound) cannot hold the caller past the limit."""
    answer: list[bool] = []
    probe = threading.Thread(target=lambda: answer.append(_connects(_probe_address(endpoint))), daemon=True)
    probe.start()
    probe.join(PROBE_TIMEOUT_S)
    return bool(answer and answer[0])


def _unreachable(what: str, detail: str = "") -> MPRMError:
    return MPRMError(
        f"{what}: the Hub ({constants.ENDPOINT}) cannot be reached{detail} "
        "(set HF_HUB_OFFLINE=1 to skip the network)"
    )


def ensure_hub_reachable(what: str) -> None:
    """Raise one MPRMError line naming `what` when the Hub cannot be reached: for calls (a push) that
    the local cache cannot answer."""
    if not endpoint_reachable(constants.ENDPOINT):
        raise _unreachable(what)


def from_hub(name: str, kind: str, load: Callable[[dict[str, Any]], T]) -> T:
    """`load(hub_kwargs)` for the Hub repo `name` (a `kind`: "model", "dataset").

    The keyword arguments are none when offline mode is set or the Hub answers (the libraries behave as
    they always do), and `local_files_only=True` when it cannot be reached: the cache answers at once,
    and a miss (an OSError) becomes one line instead of a minute of retries."""
    if constants.is_offline_mode() or endpoint_reachable(constants.ENDPOINT):
        return load({})
    try:
        return load({"local_files_only": True})
    except OSError as error:
        raise _unreachable(name, f" and the {kind} is not in the local cache") from error
