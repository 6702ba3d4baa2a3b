"""Turn a local path or a Hub dataset id into a local folder, and unpack the archives Hub repos ship.

OpenGVLab publishes VisualPRM400K-v1.1-Raw as `annotations.zip` + `images.zip` and VisualProcessBench
as `test.jsonl` + `images.zip`, while a user's local copy is usually already unpacked. Both loaders
therefore accept either layout: archives are unpacked once into the datasets cache and reused.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mprm_hf.errors import MPRMError, first_line
from mprm_hf.hub_access import REPO_ID, from_hub

ANNOTATIONS_DIR = "annotations"
# The VisualPRM400K Hub repo ships annotations.zip; an unpacked mirror ships annotations/*.jsonl. Fetch either.
HUB_ANNOTATION_PATTERNS = ("annotations/*.jsonl", "annotations.zip", "README.md")


def mprm_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """Our own folder inside the datasets cache (or inside `cache_dir` when one is given)."""
    import datasets

    return Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "mprm_hf"


def locate_dataset(
    path_or_repo: str | Path,
    *,
    allow_patterns: Sequence[str] | None,
    revision: str | None = None,
    what: str = "dataset",
) -> Path:
    """A local folder for `path_or_repo`: the path itself, or a Hub snapshot of the dataset repo.

    Offline (HF_HUB_OFFLINE=1) or with the Hub out of reach, a snapshot already in the Hub cache is still
    found; anything else becomes one MPRMError line that says how to proceed.
    """
    path = Path(path_or_repo).expanduser()
    if path.exists():
        if not path.is_dir():
            raise MPRMError(f"{path}: expected a folder holding the {what}, got a file")
        return path.resolve()
    text = str(path_or_repo)
    if not REPO_ID.match(text) or text.startswith((".", "/", "~")):
        raise MPRMError(f"{text}: no such folder, and not a Hub dataset id (owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    def download(hub: dict[str, Any]) -> str:
        return snapshot_download(
            repo_id=text,
            repo_type="dataset",
            revision=revision,
            allow_patterns=list(allow_patterns) if allow_patterns else None,
            **hub,
        )

    try:
        folder = from_hub(text, "dataset", download)
    except LocalEntryNotFoundError as err:
        raise MPRMError(
            f"{text}: no such local folder, and the Hub cannot be reached with no copy cached "
            f"({first_line(err)}); pass a local folder holding the {what}"
        ) from None
    except (RepositoryNotFoundError, GatedRepoError) as err:
        raise MPRMError(
            f"{text}: no such dataset repo on the Hub, or no access ({first_line(err)})"
        ) from None
    except RevisionNotFoundError as err:
        raise MPRMError(f"{text}: revision {revision!r} not found ({first_line(err)})") from None
    except (HfHubHTTPError, OSError) as err:
        raise MPRMError(f"{text}: download from the Hub failed ({first_line(err)})") from None
    return Path(folder)


def unpack_archive(archive: Path, cache_dir: str | Path | None = None) -> Path:
    """Unpack `archive` once into the cache, keyed by its path, size and mtime; return the folder.

    A `.complete` marker is written last, so an interrupted unpack is redone instead of half-used.
    """
    stat = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = mprm_cache_dir(cache_dir) / "unpacked" / f"{archive.stem}-{key}"
    marker = target / ".complete"
    if not marker.exists():
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(target)
        except (zipfile.BadZipFile, OSError) as err:
            raise MPRMError(f"{archive}: cannot unpack ({first_line(err)})") from None
        marker.touch()
    return target


def annotations_root(folder: Path, cache_dir: str | Path | None) -> Path:
    """The VisualPRM400K folder that holds `annotations/`: given directly, given as `annotations/` itself, or
    as the `annotations.zip` the Hub repo ships (unpacked once into the cache)."""
    if (folder / ANNOTATIONS_DIR).is_dir():
        return folder
    if folder.name == ANNOTATIONS_DIR and any(folder.glob("*.jsonl")):
        return folder.parent
    archive = folder / f"{ANNOTATIONS_DIR}.zip"
    if archive.is_file():
        unpacked = unpack_archive(archive, cache_dir)
        for candidate in [unpacked, *sorted(p for p in unpacked.iterdir() if p.is_dir())]:
            if (candidate / ANNOTATIONS_DIR).is_dir():
                return candidate
        raise MPRMError(f"{archive}: holds no '{ANNOTATIONS_DIR}/' folder")
    raise MPRMError(
        f"{folder}: no '{ANNOTATIONS_DIR}/' folder (nor {ANNOTATIONS_DIR}.zip) with *.jsonl files"
    )
