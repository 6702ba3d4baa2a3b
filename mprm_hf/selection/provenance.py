"""`selection.json`: how a subset was chosen, in a file beside it that training reads back.

Every subset `build_subset` writes carries one, and so does every folder staged for the Hub: the
selector and its parameters, the corpus (a Hub id, or a local folder's name: never a path of the
publisher's disk) and its revision, and the counts. The model card of a PRM trained on the subset
quotes it, instead of guessing from the dataset card's text.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mprm_hf.errors import MPRMError
from mprm_hf.fileio import write_text_atomic

SELECTION_FILE = "selection.json"
UNKNOWN_SELECTOR = "unknown (no selection.json with the dataset)"


def selection_path(subset: str | os.PathLike[str]) -> Path:
    """Where a subset's record lives: inside a folder subset, beside a file one (`NAME.selection.json`)."""
    path = Path(subset)
    return (
        path / SELECTION_FILE
        if path.is_dir() or not path.suffix
        else path.with_name(path.stem + ".selection.json")
    )


def selection_record(result: Any, *, corpus: str | os.PathLike[str], revision: str | None) -> dict[str, Any]:
    """The record of a `SubsetResult`: selector, parameters, corpus, revision and counts."""
    from mprm_hf import __version__
    from mprm_hf.hub_access import portable_path

    report = result.report
    return {
        "selector": report.selector,
        "selector_params": dict(report.params),
        "corpus": portable_path(corpus),
        "revision": revision,
        "format": result.fmt,
        "counts": {
            "rollouts_total": report.n_total,
            "rollouts_selected": report.n_kept,
            "rollouts_written": result.n_written,
            "per_source": report.per_source(),
            "label_balance_before": report.balance_before(),
            "label_balance_after": report.balance_after(),
        },
        "mprm_hf_version": __version__,
    }


def write_selection(path: str | os.PathLike[str], record: Mapping[str, Any]) -> Path:
    path = Path(path)
    write_text_atomic(path, json.dumps(dict(record), indent=2) + "\n")
    return path


def read_selection(dataset: str | os.PathLike[str] | None, *, revision: str | None = None) -> dict[str, Any]:
    """The selection record of a training dataset (folder, file or Hub id); `{"selector": UNKNOWN_SELECTOR}`
    when it has none (a dataset mprm-hf did not select, or a Hub repo that cannot be reached)."""
    if dataset is None:
        return {"selector": UNKNOWN_SELECTOR, "selector_params": {}}
    path = Path(dataset).expanduser()
    candidate = selection_path(path) if path.exists() else _hub_selection(str(dataset), revision)
    if candidate is None or not candidate.is_file():
        return {"selector": UNKNOWN_SELECTOR, "selector_params": {}}
    try:
        record = json.loads(candidate.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise MPRMError(f"{candidate}:{error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get("selector_params", {}), dict):
        raise MPRMError(f"{candidate}: field 'selector_params' must be a JSON object")
    record.setdefault("selector", UNKNOWN_SELECTOR)
    record.setdefault("selector_params", {})
    return record


@functools.cache
def _hub_selection(repo_id: str, revision: str | None) -> Path | None:
    """`selection.json` of a Hub dataset repo (or the cached copy); None when there is none to be had.
    Asked once per process: every save writes the model card, and it must not ask the Hub each time."""
    from mprm_hf.hub_access import hub_repo_id

    if hub_repo_id(repo_id) is None:
        return None
    from huggingface_hub import hf_hub_download

    from mprm_hf.hub_access import from_hub

    def download(hub: dict[str, Any]) -> str:
        return hf_hub_download(repo_id, SELECTION_FILE, repo_type="dataset", revision=revision, **hub)

    try:
        return Path(from_hub(repo_id, "dataset", download))
    except Exception:  # noqa: BLE001 - offline, no such file or repo, no network: the card says "unknown"
        return None
