"""What `mistralrs doctor` checks around the Hugging Face Hub: reachability, token, cache, disk.

The hub is optional (local folders and a warm cache work offline), so being
offline is a warning, never an error, and every request has a short timeout
so the doctor cannot hang on a dead network.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import httpx2  # huggingface_hub's HTTP client; its session raises these
from huggingface_hub import constants, get_token
from huggingface_hub.errors import OfflineModeIsEnabled
from huggingface_hub.utils import build_hf_headers, get_session

from mistralrs.cli.doctor_checks import ERROR, OK, WARN, Check
from mistralrs.cli.token_source import DEFAULT_TOKEN_SOURCE, TokenSource
from mistralrs.errors import UserError

TIMEOUT_S = 3.0
GB = 1000**3
DISK_WARN_BYTES = 10 * GB
DISK_ERROR_BYTES = 1 * GB
NETWORK_ERRORS = (httpx2.HTTPError, OfflineModeIsEnabled, OSError)


def hub_checks(token_source: TokenSource | None) -> list[Check]:
    reachable, hub = hub_connectivity()
    return [hub, hub_token(token_source or DEFAULT_TOKEN_SOURCE, reachable), cache_writable(), disk_space()]


def hub_connectivity() -> tuple[bool, Check]:
    endpoint = constants.ENDPOINT
    if constants.is_offline_mode():
        return False, Check("Hugging Face Hub", WARN, "Offline mode (HF_HUB_OFFLINE=1): the hub was not contacted.",
                            "Only cached models and local folders load; unset HF_HUB_OFFLINE to download.")
    try:
        response = get_session().head(endpoint, timeout=TIMEOUT_S, follow_redirects=True)
    except NETWORK_ERRORS as exc:
        return False, Check("Hugging Face Hub", WARN, f"Cannot reach {endpoint} ({_reason(exc)}).",
                            "Check the network or proxy (HTTPS_PROXY); cached models still load.")
    if response.status_code >= 500:
        return False, Check("Hugging Face Hub", WARN, f"{endpoint} answered HTTP {response.status_code}.",
                            "The hub may be down; try again later. Cached models still load.")
    return True, Check("Hugging Face Hub", OK, f"{endpoint} is reachable.")


def hub_token(source: TokenSource, reachable: bool) -> Check:
    try:
        token = source.resolve()
    except UserError as exc:
        return Check("Hugging Face token", ERROR, exc.message, "Fix --token-source or run `mistralrs login`.")
    if token is None:
        token = get_token()  # what `cache` means: HF_TOKEN, then the file `mistralrs login` writes
    if not token:
        why = "--token-source none" if token is False else f"no token (HF_TOKEN unset, no {constants.HF_TOKEN_PATH})"
        return Check("Hugging Face token", WARN, f"Anonymous: {why}; gated models will not download.",
                     "Run `mistralrs login` if you need gated models (Llama, Gemma, ...).")
    if not reachable:
        return Check("Hugging Face token", WARN, "A token is set but could not be verified: the hub is unreachable.",
                     "Run `mistralrs doctor` again when online.")
    return _verify_token(token)


def _verify_token(token: str) -> Check:
    url = f"{constants.ENDPOINT}/api/whoami-v2"
    try:
        response = get_session().get(url, headers=build_hf_headers(token=token), timeout=TIMEOUT_S)
    except NETWORK_ERRORS as exc:
        return Check("Hugging Face token", WARN, f"Could not verify the token ({_reason(exc)}).",
                     "Run `mistralrs doctor` again when online.")
    if response.status_code == 401:
        # The hub refuses every request carrying a bad token, public models included.
        return Check("Hugging Face token", ERROR, "The hub rejects the token (HTTP 401): every download will fail.",
                     "Create a new token at https://huggingface.co/settings/tokens and run `mistralrs login`.")
    if response.status_code != 200:
        return Check("Hugging Face token", WARN, f"Could not verify the token (HTTP {response.status_code}).",
                     "Run `mistralrs doctor` again later.")
    try:
        user = response.json().get("name", "?")
    except ValueError:
        user = "?"
    return Check("Hugging Face token", OK, f"Valid token for user {user}.")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def cache_writable() -> Check:
    cache = constants.HF_HUB_CACHE
    existing = _nearest_existing(cache)
    try:
        # A real file, not os.access: ACLs, read-only mounts and quotas only show when writing.
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".mistralrs-doctor-"):
            pass
    except OSError as exc:
        return Check("HF cache", ERROR, f"{existing} is not writable ({exc.strerror}); downloads will fail.",
                     "Fix its permissions, or point HF_HOME / HF_HUB_CACHE (or --hf-cache) somewhere writable.")
    if existing != cache:
        return Check("HF cache", OK, f"{cache} does not exist yet; {existing} is writable, so it can be created.")
    return Check("HF cache", OK, f"{cache} is writable.")


def disk_space() -> Check:
    existing = _nearest_existing(constants.HF_HUB_CACHE)
    try:
        free = shutil.disk_usage(existing).free
    except OSError as exc:
        return Check("Disk space", WARN, f"Cannot read the free space of {existing} ({exc.strerror}).")
    shown = f"{free / GB:.1f} GB free in {existing}"
    if free < DISK_ERROR_BYTES:
        return Check("Disk space", ERROR, shown + ": too little for any model.",
                     "Free space (`mistralrs cache delete -m ID`) or move HF_HOME to a larger disk.")
    if free < DISK_WARN_BYTES:
        return Check("Disk space", WARN, shown + ": room for small models only.",
                     "Free space (`mistralrs cache list`, `mistralrs cache delete -m ID`).")
    return Check("Disk space", OK, shown + ".")


def _nearest_existing(path: str) -> str:
    """`path`, or its closest ancestor that exists (the cache is created on the first download)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path
