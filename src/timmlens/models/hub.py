"""Resolve ``hf-hub:`` model ids to a local folder, cache first, failing fast offline.

huggingface_hub retries an unreachable host for about 20 seconds before giving up.
We look in the local cache first (no network), then check in a few seconds that the
hub answers at all, and only then download; so a machine without internet gets a
clear error at once, never a hang and never random weights.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from ..errors import HubUnavailableError, ModelLoadError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CONNECT_TIMEOUT_S = 3.0


def split_revision(repo: str) -> tuple[str, str | None]:
    """``"timm/resnet18.a1_in1k@v1"`` -> ``("timm/resnet18.a1_in1k", "v1")``."""
    repo_id, _, revision = repo.partition("@")
    return repo_id, revision or None


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "")
    return bool(constants.HF_HUB_OFFLINE) or flag.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_reachable(timeout_s: float = CONNECT_TIMEOUT_S) -> bool:
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _unavailable(repo: str, reason: str) -> HubUnavailableError:
    """``repo`` as the user wrote it, ``@revision`` included: a cached main is not that
    revision, so the message must say which one was asked for."""
    lead = (
        f"Cannot load 'hf-hub:{repo}': {reason}. Supply the weights another way: "
        f"download it once where the hub is reachable (it stays in the HF cache, "
        f"HF_HOME / HF_HUB_CACHE), copy a folder with config.json and model.safetensors "
        f"and pass its path, or pass a weights file with an architecture name "
    )
    return HubUnavailableError(
        f"{lead}(load_model('resnet18', weights='resnet18.safetensors')).",
        cli=f"{lead}(--model resnet18 --weights resnet18.safetensors).",
    )


def _download(repo_id: str, revision: str | None, cache_dir: str | None, local_only: bool) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    config = hf_hub_download(
        repo_id, "config.json", revision=revision, cache_dir=cache_dir, local_files_only=local_only
    )
    for filename in WEIGHT_FILES:
        try:
            hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=local_only,
            )
            return Path(config).parent
        except EntryNotFoundError:  # LocalEntryNotFoundError included: try the next format
            continue
    if local_only:  # a partial cache: let the caller try the hub
        raise LocalEntryNotFoundError(f"no weights for {repo_id} in the local cache")
    raise ModelLoadError(
        f"'hf-hub:{repo_id}{'@' + revision if revision else ''}' has a config.json but "
        f"none of {', '.join(WEIGHT_FILES)}"
        + (" in the local cache" if local_only else "")
        + "; it is not a timm model repository with weights."
    )


def resolve_hub_folder(repo: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Local snapshot folder (config.json + weights) of a HuggingFace Hub timm repo.

    Args:
        repo: ``"owner/name"`` optionally followed by ``"@revision"`` (no ``hf-hub:`` prefix).
        cache_dir: HF cache to use instead of the default (``HF_HUB_CACHE``).

    Raises:
        HubUnavailableError: not cached, and offline (``HF_HUB_OFFLINE``) or hub unreachable.
    """
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, revision = split_revision(repo)
    cache = None if cache_dir is None else str(cache_dir)
    try:
        return _download(repo_id, revision, cache, local_only=True)
    except LocalEntryNotFoundError:
        pass
    if _hub_offline():
        raise _unavailable(repo, "it is not in the local HF cache and HF_HUB_OFFLINE is set")
    if not _hub_reachable():
        raise _unavailable(
            repo,
            f"it is not in the local HF cache and the hub did not answer within "
            f"{CONNECT_TIMEOUT_S:.0f} s (no internet?)",
        )
    try:
        return _download(repo_id, revision, cache, local_only=False)
    except (OSError, ConnectionError) as exc:
        raise _unavailable(repo, f"the download failed ({exc})") from exc
