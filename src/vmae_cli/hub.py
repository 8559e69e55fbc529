"""Where a model's files are: a local folder, a weight file inside one, or a Hub id through the Hugging Face
cache. The one place that downloads from the Hub, and that turns the Hub's many errors into ours.

The names of the files of a model folder in the Hugging Face layout are here too, since every layer reads them.
Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError, ModelNotFoundError

CONFIG_NAME = "config.json"
PREPROCESSOR_NAME = "preprocessor_config.json"
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PT_WEIGHTS = "pytorch_model.bin"
PT_INDEX = "pytorch_model.bin.index.json"
WEIGHT_CANDIDATES = (SAFE_WEIGHTS, SAFE_INDEX, PT_WEIGHTS, PT_INDEX)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")


def is_hub_id(ref: str) -> bool:
    """Whether `ref` is spelled as a Hub model id (`name` or `owner/name`, no `..`)."""
    return bool(_HUB_ID.match(ref)) and ".." not in ref


@dataclass
class ResolvedModel:
    """Local files of a model: its folder, config, weight files (one, or shards) and preprocessor config."""

    source: str
    folder: Path
    config_path: Path
    weights: list[Path]
    preprocessor_path: Path | None


def resolve(ref: str | os.PathLike, revision: str | None = None, weights: bool = True) -> ResolvedModel:
    """Find a model's files: a local folder, a weight file inside one, or a Hub id (through the HF cache)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return _resolve_folder(path, str(ref), weights)
    if path.is_file():
        if path.name == CONFIG_NAME:
            return _resolve_folder(path.parent, str(ref), weights)
        if path.suffix in (".safetensors", ".bin", ".json"):
            found = _resolve_folder(path.parent, str(ref), weights=False)
            found.weights = _expand_index(path) if path.suffix == ".json" else [path]
            return found
        raise CheckpointError(
            f"{ref}: not a model folder or weight file; for an original VideoMAE checkpoint run "
            f"`vmae convert {ref} OUT_DIR` first"
        )
    ref = str(ref)
    if is_hub_id(ref):
        return _resolve_hub(ref, revision, weights)
    raise ModelNotFoundError(f"{ref}: no such file or folder")


def _resolve_folder(folder: Path, source: str, weights: bool) -> ResolvedModel:
    config = folder / CONFIG_NAME
    if not config.is_file():
        raise ModelNotFoundError(
            f"{folder}: no {CONFIG_NAME} here, so it is not a model folder (expected {CONFIG_NAME} and "
            f"{SAFE_WEIGHTS}); for an original VideoMAE .pth file run `vmae convert`"
        )
    files: list[Path] = []
    if weights:
        for name in WEIGHT_CANDIDATES:
            if (folder / name).is_file():
                files = _expand_index(folder / name) if name.endswith(".json") else [folder / name]
                break
        else:
            raise ModelNotFoundError(
                f"{folder}: no weights ({SAFE_WEIGHTS} or {PT_WEIGHTS}) beside {CONFIG_NAME}"
            )
    pre = folder / PREPROCESSOR_NAME
    return ResolvedModel(source, folder, config, files, pre if pre.is_file() else None)


def _read_index(index: Path) -> list[str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index}: not a valid shard index ({e})") from None
    return sorted(set(weight_map.values()))


def _expand_index(index: Path) -> list[Path]:
    shards = [index.parent / name for name in _read_index(index)]
    absent = [s.name for s in shards if not s.is_file()]
    if absent:
        raise ModelNotFoundError(f"{index}: shard files are missing: {', '.join(absent)}")
    return shards


class NotOnThisMachine(ModelNotFoundError):
    """A Hub file that is not in the local cache, while the Hub cannot be reached."""


class NotInRepository(ModelNotFoundError):
    """The Hub repository has no such file."""


def download(repo_id: str, name: str, revision: str | None = None) -> Path:
    """One file of a Hub model, from the local cache or downloaded into it. Every way this fails is a
    ModelNotFoundError that says why (NotOnThisMachine, NotInRepository, or the repository's own state)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = _where(repo_id, revision)
    try:
        return Path(hf_hub_download(repo_id, name, revision=revision))
    except GatedRepoError:
        raise ModelNotFoundError(
            f"{where}: gated model; accept its terms on the Hub and log in (`hf auth login`)"
        ) from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(
            f"{where}: not a local folder, and no such model on the Hugging Face Hub (check the name, or log in "
            "for a private model)"
        ) from None
    except RevisionNotFoundError:
        raise ModelNotFoundError(f"{where}: no such revision on the Hub") from None
    except LocalEntryNotFoundError:  # (a kind of EntryNotFoundError: first)
        raise _not_cached(where, repo_id, "not a local folder, and") from None
    except EntryNotFoundError:
        raise NotInRepository(f"{where}: the Hub repository has no {name}") from None
    except HfHubHTTPError as e:
        raise ModelNotFoundError(
            f"{where}: the Hub answered an error ({e.__class__.__name__}); try again later"
        ) from None


def _where(repo_id: str, revision: str | None) -> str:
    return repo_id + (f"@{revision}" if revision else "")


def _not_cached(where: str, repo_id: str, what: str) -> NotOnThisMachine:
    return NotOnThisMachine(
        f"{where}: {what} it is not in the local Hugging Face cache ({_cache_dir()}) and the Hub cannot be "
        f"reached{' (HF_HUB_OFFLINE is set)' if _offline() else ''}: download it once with network access "
        f"(`hf download {repo_id}`), or pass a local model folder"
    )


def _resolve_hub(repo_id: str, revision: str | None, weights: bool) -> ResolvedModel:
    try:
        config = download(repo_id, CONFIG_NAME, revision)
    except NotInRepository as e:
        raise NotInRepository(f"{e}; is it a VideoMAE model?") from None
    files: list[Path] = []
    offline = False
    if weights:
        for name in WEIGHT_CANDIDATES:
            try:
                first = download(repo_id, name, revision)
            except NotOnThisMachine:
                offline = True
                continue
            except NotInRepository:
                continue
            files = (
                [download(repo_id, shard, revision) for shard in _read_index(first)]
                if name.endswith(".json")
                else [first]
            )
            break
        if not files:
            where = _where(repo_id, revision)
            if offline:
                raise _not_cached(where, repo_id, "weights missing,")
            raise NotInRepository(f"{where}: the repository has no weights ({SAFE_WEIGHTS} or {PT_WEIGHTS})")
    try:
        pre: Path | None = download(repo_id, PREPROCESSOR_NAME, revision)
    except ModelNotFoundError:  # the config came: the repository is there and has no preprocessor (or the
        pre = None  # Hub failed in between, and the model's defaults serve)
    return ResolvedModel(repo_id, config.parent, config, files, pre)


def cached(ref: str, revision: str | None = None) -> ResolvedModel | None:
    """A model's files on this machine, without reaching the Hub: a local folder (or weight file), or a Hub
    model's files in the local cache (`weights`: its model.safetensors if that is cached, else none); None if
    its config is not here."""
    if Path(ref).expanduser().exists():
        return resolve(ref, revision)
    if not is_hub_id(ref):
        return None
    from huggingface_hub import try_to_load_from_cache

    def local(name: str) -> Path | None:
        found = try_to_load_from_cache(ref, name, revision=revision)
        return Path(found) if isinstance(found, str) else None

    config = local(CONFIG_NAME)
    if config is None:
        return None
    weights = local(SAFE_WEIGHTS)
    return ResolvedModel(ref, config.parent, config, [weights] if weights else [], local(PREPROCESSOR_NAME))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)
