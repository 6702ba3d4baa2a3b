"""Cards, staging and pushing: everything that leaves this machine for the Hub goes through this module.

A subset or a checkpoint is first *staged*: written completely (files + `README.md` card) into a
temporary folder that is renamed into place only when everything succeeded, so a crash or a refusal
never leaves a half-written folder. Pushing then uploads a staged folder as one commit. Tokens come
from the environment or `hf auth login` only; they are never logged, and every card and staged file
is checked so that a token can never be published by accident.
"""

from __future__ import annotations

import argparse
import mmap
import os
import re
import shlex
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import huggingface_hub
from huggingface_hub import (
    DatasetCard,
    DatasetCardData,
    EvalResult,
    HfApi,
    ModelCard,
    ModelCardData,
    RepoCard,
)
from huggingface_hub.utils import get_stored_tokens

from mprm_hf.errors import MPRMError
from mprm_hf.fileio import atomic_output, write_text_atomic
from mprm_hf.hub_access import REPO_ID, hub_repo_id, portable_path

CARDS_DIR = Path(__file__).resolve().parent / "hub_cards"  # package data: it ships in the wheel
BASE_TAGS = ("process-reward-model", "multimodal", "mprm-hf")
REPO_TYPES = ("model", "dataset", "space")
DEFAULT_BENCHMARK = "OpenGVLab/VisualProcessBench"

# Hub user access tokens: "hf_" followed by 34 letters/digits; a few more are allowed for safety.
_TOKEN_PATTERN = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")
_BALANCE_KEYS = ("steps", "positive", "negative", "positive_fraction")
_SIZE_BOUNDS = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")]
_SIZE_BOUNDS += [(10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]


# ---------------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------------
_REGISTERED_TOKENS: set[str] = set()


def register_token(token: str) -> None:
    """A token given explicitly (e.g. `--hub_token`), whatever its shape: the scans look for it too."""
    _REGISTERED_TOKENS.add(token)


def known_tokens() -> list[str]:
    """Every Hub token this process could use: the environment's, the ones `hf auth login` stored and
    the ones given explicitly."""
    candidates = {
        *_REGISTERED_TOKENS,
        os.environ.get("HF_TOKEN"),
        os.environ.get("HUGGING_FACE_HUB_TOKEN"),
        huggingface_hub.get_token(),
    }
    candidates.update(get_stored_tokens().values())
    return sorted(token for token in candidates if token and len(token) >= 8)


def ensure_no_secrets(text: str, *, where: str) -> None:
    """Refuse text that contains a Hub token (ours, or anything shaped like one) before it is written."""
    if any(token in text for token in known_tokens()) or _TOKEN_PATTERN.search(text):
        raise MPRMError(f"{where}: contains a Hugging Face access token; refusing to write or push it")


def _file_contains(path: Path, needles: Iterable[bytes]) -> bool:
    """Search a file of any size without reading it into memory (checkpoints can be many GB)."""
    if path.stat().st_size == 0:
        return False
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return any(data.find(needle) != -1 for needle in needles)


PUSH_IGNORE = ["checkpoint-*", "checkpoint-*/**", "_*", ".*", "**/.*", "runs/**"]
"""What a push of a folder leaves out, as `Trainer.push_to_hub` does: checkpoints, hidden and `_` files, and
TensorBoard logs; the final weights, processor and card in the folder itself go up."""


def pushed_files(folder: Path) -> list[Path]:
    """The files a push of `folder` uploads (`PUSH_IGNORE` applied, as `upload_folder` applies it)."""
    from huggingface_hub.utils import filter_repo_objects

    relative = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return [folder / name for name in filter_repo_objects(relative, ignore_patterns=PUSH_IGNORE)]


def ensure_folder_has_no_secrets(folder: Path) -> None:
    """Check every file that would be pushed (a pickled `training_args.bin` can hold a `hub_token`) and
    the card's text."""
    needles = [token.encode() for token in known_tokens()]
    for path in pushed_files(folder):
        if needles and _file_contains(path, needles):
            raise MPRMError(f"{path}: contains a Hugging Face access token; refusing to write or push it")
    readme = folder / "README.md"
    if readme.is_file():
        ensure_no_secrets(readme.read_text(encoding="utf-8"), where=str(readme))


def _scrub(message: str) -> str:
    """Error messages from HTTP libraries must not echo a token back to the terminal or a log."""
    for token in known_tokens():
        message = message.replace(token, "***")
    return _TOKEN_PATTERN.sub("***", message)


# ---------------------------------------------------------------------------------------------
# Cards
# ---------------------------------------------------------------------------------------------
def portable_command(argv: Sequence[str]) -> str:
    """A command line for a card: every absolute path in it made portable (`portable_path`)."""
    tokens = []
    for token in argv:
        flag, equals, value = token.partition("=")
        if equals and flag.startswith("--"):
            tokens.append(f"{flag}={portable_path(value)}")
        else:
            tokens.append(portable_path(token))
    return shlex.join(tokens)


def _command_text(command: str | Sequence[str]) -> str:
    return command if isinstance(command, str) else portable_command(command)


def _tags(tags: Iterable[str]) -> list[str]:
    return list(dict.fromkeys([*BASE_TAGS, *tags]))


def _size_category(n_rows: int) -> str:
    return next((label for bound, label in _SIZE_BOUNDS if n_rows < bound), "n>1B")


def template_path(name: str) -> str:
    path = CARDS_DIR / name
    if not path.is_file():
        raise MPRMError(f"{path}: card template not found (mprm_hf/hub_cards/ ships with mprm-hf)")
    return str(path)


def _require_keys(rows: Iterable[Mapping[str, Any]], keys: Sequence[str], *, where: str) -> None:
    for index, row in enumerate(rows):
        missing = [key for key in keys if key not in row]
        if missing:
            raise MPRMError(f"{where}[{index}]: field {missing[0]!r} is missing (needs {', '.join(keys)})")


def render_dataset_card(
    *,
    pretty_name: str,
    command: str | Sequence[str],
    selector: str,
    selector_params: Mapping[str, Any],
    source_corpus: str | os.PathLike[str],
    source_revision: str | None,
    per_source: Sequence[Mapping[str, Any]],
    label_balance_before: Mapping[str, Any],
    label_balance_after: Mapping[str, Any],
    n_rollouts_kept: int,
    n_rollouts_total: int,
    histogram_path: str | None = None,
    license: str | None = None,
    tags: Iterable[str] = (),
    repo_id: str | None = None,
    data_format: str = "parquet",
    hub_images: str | None = "embed",
) -> DatasetCard:
    """The card of a selected subset: how it was chosen, from what, and what it keeps, per source."""
    _require_keys(per_source, ("source", "kept", "total"), where="per_source")
    _require_keys([label_balance_before], _BALANCE_KEYS, where="label_balance_before")
    _require_keys([label_balance_after], _BALANCE_KEYS, where="label_balance_after")
    source_repo = hub_repo_id(source_corpus)
    card_data = DatasetCardData(
        pretty_name=pretty_name,
        license=license or "unknown",
        language=["en"],
        tags=_tags(tags),
        task_categories=["image-text-to-text"],
        size_categories=[_size_category(n_rollouts_kept)],
        source_datasets=[source_repo] if source_repo else None,
    )
    card = DatasetCard.from_template(
        card_data,
        template_path=template_path("dataset_card.md"),
        command=_command_text(command),
        selector=selector,
        selector_params=dict(selector_params),
        source_corpus=str(source_corpus),
        source_revision=source_revision,
        per_source=[dict(row) for row in per_source],
        label_balance_before=dict(label_balance_before),
        label_balance_after=dict(label_balance_after),
        n_rollouts_kept=n_rollouts_kept,
        n_rollouts_total=n_rollouts_total,
        histogram_path=histogram_path,
        repo_id=repo_id,
        data_format=data_format,
        hub_images=hub_images,
    )
    ensure_no_secrets(str(card), where="dataset card")
    return card


def eval_results_from_metrics(
    metrics: Mapping[str, Any],
    *,
    dataset: str = DEFAULT_BENCHMARK,
    split: str = "test",
    threshold: float = 0.5,
) -> list[EvalResult]:
    """`model-index` entries from the VisualProcessBench metric's output (overall and per source)."""
    dataset_name = Path(dataset).name if hub_repo_id(dataset) is None else dataset
    common = {
        "task_type": "process-reward-modeling",
        "task_name": "Process reward modeling (step correctness)",
        "dataset_type": dataset_name,
        "dataset_name": dataset_name.split("/")[-1],
        "dataset_split": split,
    }
    thresholded = {"metric_args": {"threshold": threshold}}
    overall = [
        ("overall", "overall_micro_f1", "Overall (micro average of per-source macro-F1)"),
        ("macro_f1_pooled", "macro_f1", "Pooled macro-F1"),
        ("f1_positive", "f1", "F1 (correct steps)"),
        ("f1_negative", "f1", "F1 (incorrect steps)"),
        ("auc", "roc_auc", "ROC-AUC"),
    ]
    results = [
        EvalResult(
            metric_type=metric_type,
            metric_name=name,
            metric_value=float(metrics[key]),
            **common,
            **({} if key == "auc" else thresholded),  # ROC-AUC does not depend on the threshold
        )
        for key, metric_type, name in overall
        if metrics.get(key) is not None
    ]
    per_source = [
        ("macro_f1", "macro_f1", "Macro-F1"),
        ("f1_positive", "f1", "F1 (correct steps)"),
        ("f1_negative", "f1", "F1 (incorrect steps)"),
    ]
    for source, row in (metrics.get("per_source") or {}).items():
        for key, metric_type, name in per_source:
            if row.get(key) is not None:
                results.append(
                    EvalResult(
                        metric_type=metric_type,
                        metric_name=f"{name}, {source}",
                        metric_value=float(row[key]),
                        dataset_config=str(source),
                        **common,
                        **thresholded,
                    )
                )
    return results


def render_model_card(
    *,
    model_name: str,
    base_model: str | os.PathLike[str],
    datasets: str | os.PathLike[str] | Sequence[str],
    selector: str,
    selector_params: Mapping[str, Any],
    hyperparameters: Mapping[str, Any],
    step_format: str,
    command: str | Sequence[str] | None,
    evaluation: Mapping[str, Any] | None = None,
    evaluation_dataset: str = DEFAULT_BENCHMARK,
    evaluation_split: str = "test",
    evaluation_threshold: float = 0.5,
    license: str | None = None,
    tags: Iterable[str] = (),
    library_name: str = "transformers",
    pipeline_tag: str = "image-text-to-text",
    repo_id: str | None = None,
) -> ModelCard:
    """The card of a trained PRM: base model, training subset and selector, hyperparameters, scores.

    `evaluation` is the VisualProcessBench metric's output; it becomes `model-index` metadata, which
    the Hub shows as evaluation results. Local paths stay in the card's text, never in its metadata.
    """
    dataset_list = [str(datasets)] if isinstance(datasets, (str, os.PathLike)) else [str(d) for d in datasets]
    dataset_ids = [repo for repo in map(hub_repo_id, dataset_list) if repo]
    card_data = ModelCardData(
        model_name=model_name,
        base_model=hub_repo_id(base_model),
        datasets=dataset_ids or None,
        library_name=library_name,
        pipeline_tag=pipeline_tag,
        license=license or "unknown",
        tags=_tags(tags),
        eval_results=(
            eval_results_from_metrics(
                evaluation, dataset=evaluation_dataset, split=evaluation_split, threshold=evaluation_threshold
            )
            if evaluation
            else None
        ),
    )
    card = ModelCard.from_template(
        card_data,
        template_path=template_path("model_card.md"),
        model_name=model_name,
        base_model=str(base_model),
        train_data=", ".join(dataset_list),
        selector=selector,
        selector_params=dict(selector_params),
        hyperparameters=dict(hyperparameters),
        step_format=step_format,
        command=None if command is None else _command_text(command),
        evaluation_section=render_evaluation_section(
            evaluation, dataset=portable_path(evaluation_dataset), threshold=evaluation_threshold
        ),
        repo_id=repo_id,
    )
    ensure_no_secrets(str(card), where="model card")
    return card


EVALUATION_BEGIN, EVALUATION_END = "<!-- mprm-hf:evaluation -->", "<!-- /mprm-hf:evaluation -->"


def render_evaluation_section(
    evaluation: Mapping[str, Any] | None, *, dataset: str = DEFAULT_BENCHMARK, threshold: float = 0.5
) -> str:
    """The card's evaluation section (the part between the evaluation markers), from the metric's output."""
    import jinja2

    template = jinja2.Template(Path(template_path("model_card_evaluation.md")).read_text(encoding="utf-8"))
    return template.render(
        evaluation=dict(evaluation) if evaluation else None,
        evaluation_dataset=dataset,
        evaluation_threshold=threshold,
    ).strip("\n")


def _with_evaluation_section(text: str, section: str) -> str:
    block = f"{EVALUATION_BEGIN}\n{section}\n{EVALUATION_END}"
    if EVALUATION_BEGIN in text and EVALUATION_END in text:
        head, _, rest = text.partition(EVALUATION_BEGIN)
        return head + block + rest.partition(EVALUATION_END)[2]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def _merge_results(card: ModelCard, results: Sequence[EvalResult]) -> None:
    """Replace the card's results on the same dataset and split by `results`; keep all others."""
    replaced = {(result.dataset_type, result.dataset_split) for result in results}
    kept = [r for r in card.data.eval_results or [] if (r.dataset_type, r.dataset_split) not in replaced]
    card.data.eval_results = [*kept, *results] or None


def update_model_card(
    folder: str | os.PathLike[str],
    metrics: Mapping[str, Any],
    *,
    dataset: str = DEFAULT_BENCHMARK,
    split: str = "test",
    threshold: float = 0.5,
) -> Path:
    """Add benchmark results to the model card in `folder` (README.md, written if missing): `model-index`
    entries (replacing earlier ones of the same dataset and split), the evaluation section, and, when
    the threshold was chosen (calibrated or fixed, not the default), `prm_threshold`, which the demo reads."""
    folder = Path(folder)
    readme = folder / "README.md"
    if not folder.is_dir():
        raise MPRMError(f"{folder}: model folder not found (the card is updated in a local folder)")
    name = folder.resolve().name
    card = (
        _load_card(folder, "model")
        if readme.is_file()
        else ModelCard(f"---\nlibrary_name: transformers\n---\n\n# {name}\n")
    )
    card.data.model_name = card.data.model_name or name
    _merge_results(
        card, eval_results_from_metrics(metrics, dataset=dataset, split=split, threshold=threshold)
    )
    if metrics.get("threshold_source", "fixed") != "default":
        card.data.prm_threshold = float(threshold)
    card.text = _with_evaluation_section(
        card.text, render_evaluation_section(metrics, dataset=portable_path(dataset), threshold=threshold)
    )
    text = str(card)
    ensure_no_secrets(text, where=str(readme))
    write_text_atomic(readme, text)
    return readme


def carry_evaluations(card: ModelCard, previous: Path) -> ModelCard:
    """A card written again on save keeps the benchmark results an earlier `evaluate --update-card` added
    (other datasets' `model-index` entries, `prm_threshold`, and their section when the new card has none)."""
    if not previous.is_file():
        return card
    try:
        old = ModelCard.load(previous)
    except Exception:  # noqa: BLE001 - a hand-broken old card is replaced, not carried
        return card
    new_keys = {(r.dataset_type, r.dataset_split) for r in card.data.eval_results or []}
    carried = [r for r in old.data.eval_results or [] if (r.dataset_type, r.dataset_split) not in new_keys]
    if carried:
        _merge_results(card, carried)
        old_section = old.text.partition(EVALUATION_BEGIN)[2].partition(EVALUATION_END)[0].strip("\n")
        new_section = card.text.partition(EVALUATION_BEGIN)[2].partition(EVALUATION_END)[0].strip("\n")
        if old_section and not new_section:
            card.text = _with_evaluation_section(card.text, old_section)
    threshold = old.data.to_dict().get("prm_threshold")
    if threshold is not None:
        card.data.prm_threshold = threshold
    return card


# ---------------------------------------------------------------------------------------------
# Staging
# ---------------------------------------------------------------------------------------------
FileSource = str | bytes | os.PathLike[str]


def _safe_relative(name: str) -> Path:
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise MPRMError(f"staged file name {name!r} must be a relative path inside the folder")
    return relative


def _copy_into(staging: Path, name: str, source: FileSource) -> None:
    target = staging / _safe_relative(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(source, bytes):
        target.write_bytes(source)
    elif isinstance(source, str):
        target.write_text(source, encoding="utf-8")
    elif Path(source).is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True)
    elif Path(source).is_file():
        shutil.copy2(source, target)
    else:
        raise MPRMError(f"{source}: file to stage not found (for {name!r})")


def stage_folder(
    destination: str | os.PathLike[str],
    card: RepoCard,
    *,
    files: Mapping[str, FileSource | Path] | None = None,
    write: Callable[[Path], None] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write `card` as README.md plus `files` into `destination` all at once, or not at all.

    `files` maps a path inside the folder to a source file or folder (a `Path`, copied), or to
    content (`str` text or `bytes`); use `"."` to copy a whole folder's contents in (a checkpoint).
    `write(folder)` may add more (e.g. `dataset.to_parquet(folder / "data/train.parquet")`). Everything
    lands in a hidden sibling folder first and is renamed into place after the token check passed.
    """
    destination = Path(destination)
    if destination.exists() and not overwrite:
        raise MPRMError(f"{destination}: already exists (pass overwrite=True to replace it)")
    ensure_no_secrets(str(card), where=f"{destination / 'README.md'}")
    with atomic_output(destination, folder=True) as staging:
        for name, source in (files or {}).items():
            if name == ".":
                shutil.copytree(source, staging, dirs_exist_ok=True)
            else:
                _copy_into(staging, name, source if isinstance(source, (str, bytes)) else Path(source))
        if write is not None:
            write(staging)
        card.save(staging / "README.md")  # last, so the card wins over a README.md copied in
        ensure_folder_has_no_secrets(staging)
    return destination


# ---------------------------------------------------------------------------------------------
# Pushing
# ---------------------------------------------------------------------------------------------
def scrubbed_line(error: BaseException) -> str:
    """The first line of an error, any token in it masked: what a Hub failure may print."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return _scrub(lines[0] if lines else type(error).__name__)


def _load_card(folder: Path, repo_type: str) -> RepoCard:
    readme = folder / "README.md"
    if not readme.is_file() and (folder / "config.json").is_file():
        raise MPRMError(
            f"{readme}: no model card; `mprm-hf train` and `PRMTrainer.save_model` write one, and "
            f"`mprm-hf evaluate --model {folder} --out DIR --update-card` adds one with the results"
        )
    if not readme.is_file():
        raise MPRMError(f"{readme}: no card; stage a subset with `mprm-hf select ... --dry-run` first")
    card_class = {"dataset": DatasetCard, "model": ModelCard}.get(repo_type, RepoCard)
    try:
        return card_class.load(readme)
    except Exception as error:  # a YAML error in the header: report it as the user's file's problem
        raise MPRMError(f"{readme}: card metadata does not parse: {scrubbed_line(error)}") from None


def ensure_hub_access(target: str, token: str | None = None) -> HfApi:
    """Every check that can fail before anything is sent: not offline, a token (`token`, else the
    environment's or `hf auth login`'s), the Hub reachable and accepting it (`whoami`). One `MPRMError`
    line naming `target` otherwise; the client it checked is returned."""
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise MPRMError(f"cannot push {target}: the Hub is offline (HF_HUB_OFFLINE=1)")
    if token:
        register_token(token)
    elif huggingface_hub.get_token() is None:
        raise MPRMError(f"cannot push {target}: not logged in (set HF_TOKEN or run `hf auth login`)")
    from mprm_hf.hub_access import ensure_hub_reachable

    ensure_hub_reachable(f"cannot push {target}")  # seconds, not a minute of retries, without a network
    api = HfApi(token=token or None)
    try:
        api.whoami()
    except Exception as error:
        raise MPRMError(
            f"cannot push {target}: the Hub at {api.endpoint} is unreachable or refused the token: {scrubbed_line(error)}"
        ) from None
    return api


def push_folder(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    repo_type: str,
    private: bool = False,
    commit_message: str | None = None,
    revision: str | None = None,
    token: str | None = None,
) -> str:
    """Upload a folder with its card (a staged subset, a trained model's output folder, a Space) as one
    commit, leaving out `PUSH_IGNORE` (checkpoints, hidden files): no copy of the weights is made. Returns
    the commit's URL.

    Every check that can fail without the network (card, token scan, offline mode, login) runs
    before the first request, and reaching the Hub is checked with `whoami` before the repository is
    created, so an offline or logged-out push creates nothing.
    """
    folder = Path(folder)
    if repo_type not in REPO_TYPES:
        raise MPRMError(f"repo_type {repo_type!r} is not one of {', '.join(REPO_TYPES)}")
    if not folder.is_dir():
        raise MPRMError(f"{folder}: folder to push not found")
    if not REPO_ID.match(repo_id):
        raise MPRMError(f"repo id {repo_id!r} is not of the form 'owner/name'")
    _load_card(folder, repo_type)
    ensure_folder_has_no_secrets(folder)
    api = ensure_hub_access(f"{folder} to {repo_id}", token=token)
    try:
        space_sdk = "gradio" if repo_type == "space" else None  # the only Space this project ships
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, space_sdk=space_sdk)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        commit = api.upload_folder(
            folder_path=folder,
            repo_id=repo_id,
            repo_type=repo_type,
            revision=revision,
            commit_message=commit_message or f"Upload {repo_type} with mprm-hf",
            ignore_patterns=PUSH_IGNORE,
        )
    except Exception as error:
        raise MPRMError(f"push of {folder} to {repo_id} failed: {scrubbed_line(error)}") from None
    return str(commit)


def _infer_repo_type(folder: Path) -> str:
    """Our dataset cards always carry `size_categories`, a Space's README its `sdk`; model cards neither."""
    metadata = _load_card(folder, "model").data.to_dict()
    return "dataset" if "size_categories" in metadata else "space" if "sdk" in metadata else "model"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mprm-hf push",
        description="Push a staged subset, checkpoint or Space folder (with its README.md card) to the Hub.",
    )
    parser.add_argument(
        "folder",
        type=Path,
        help="a subset staged by `select --dry-run`, a model folder `train` wrote, or a Space staged by "
        "`demo --stage-space` (README.md inside)",
    )
    parser.add_argument("--repo-id", required=True, help="owner/name of the repository to create or update")
    parser.add_argument(
        "--repo-type", choices=REPO_TYPES, help="default: read from the card (dataset, space or model)"
    )
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", help="branch to push to (created if missing); default: main")
    parser.add_argument("--commit-message", help="default: 'Upload <type> with mprm-hf'")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        raise MPRMError(f"{args.folder}: folder to push not found")
    repo_type = args.repo_type or _infer_repo_type(args.folder)
    url = push_folder(
        args.folder,
        args.repo_id,
        repo_type=repo_type,
        private=args.private,
        commit_message=args.commit_message,
        revision=args.revision,
    )
    print(f"pushed {args.folder} to {repo_type} {args.repo_id}: {url}")
    return 0
