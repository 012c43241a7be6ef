"""Where -m points: a local folder as it is, or a hub id through the Hugging Face cache
(downloading only what a build reads), and the errors that say what to pass instead."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path

from builder.kit.errors import BuilderError
from builder.kit.hf_config import check_config
from builder.kit.tokenizer_files import REQUIRED as REQUIRED_TOKENIZER_FILES

HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
# Mistral's repositories hold the weights twice: HF shards, and consolidated.safetensors in its
# own format, which the build never reads (the index, or model.safetensors, names what it reads).
HUB_SKIP = ["consolidated*"]


# Judges a hub checkpoint's config.json (its dict, and where it came from for messages) before its
# weights are fetched: the app passes the architecture check, which this layer cannot import.
ConfigCheck = Callable[[dict, str], object]


def resolve_model_dir(model: str, config_check: ConfigCheck | None = None) -> Path:
    """A local folder as it is, or a hub id through the Hugging Face cache. config_check: see ConfigCheck."""
    try:
        path = Path(model).expanduser()
    except RuntimeError:  # '~someone/...' for a user this machine does not know
        raise BuilderError(
            f"model path {model!r}: no home folder for {model.split('/')[0]!r}; pass the folder's full path"
        ) from None
    if path.exists():
        if not path.is_dir():
            if str(model).lower().endswith((".yaml", ".yml")):
                raise BuilderError(
                    f"model path {model!r} is a file; to run a batch file: python -m builder batch {model}"
                )
            raise BuilderError(f"model path {model!r} is a file; pass the folder that holds config.json")
        return path
    if not is_hub_id(model):
        not_hub = " (nor a hub id: those are owner/name)" if model.count("/") > 1 else ""
        meant = hub_id_in(model)
        if meant is not None:
            not_hub = f" (nor a hub id: those are owner/name; for the hub's model: -m {meant})"
        raise BuilderError(
            f"model folder {model!r} does not exist{not_hub}; pass a folder with config.json "
            "and *.safetensors, or a hub id like Qwen/Qwen3-4B"
        )
    try:
        return download_from_hub(model, config_check)
    except BuilderError as e:
        hint = _local_folder_hint(model)
        if hint:
            raise BuilderError(f"{e}; {hint}") from None
        raise


_HUB_PREFIXES = (
    "hf://",
    "https://huggingface.co/",
    "http://huggingface.co/",
    "https://hf.co/",
    "huggingface.co/",
    "hf.co/",
)


def hub_id_in(model: str) -> str | None:
    """The hub id in a model's hub address or URL (hf://Org/Name, https://huggingface.co/Org/Name/tree/main,
    Org/Name/), as copied from a browser or another tool; None for anything else."""
    for prefix in _HUB_PREFIXES:
        if model.lower().startswith(prefix):
            parts = model[len(prefix) :].split("/")
            is_model = len(parts) >= 2 and all(parts[:2]) and parts[0] not in ("datasets", "spaces")
            return "/".join(parts[:2]) if is_model else None
    trimmed = model.rstrip("/")
    return trimmed if trimmed != model and hub_id_shaped(trimmed) else None


def model_name(model: str) -> str:
    """The name output folders take: a folder's own name (-m . as well), a hub id's repo name, and
    a Hugging Face cache snapshot (models--Org--Name/snapshots/<rev>) its repo's name rather than
    the revision's hash."""
    expanded = os.path.expanduser(model)
    path = Path(os.path.abspath(expanded)) if os.path.isdir(expanded) else Path(model.rstrip("/"))
    repo = path.parent.parent.name
    if path.parent.name == "snapshots" and repo.startswith("models--"):
        return repo.rsplit("--", 1)[-1]  # hub names hold no "--"
    return path.name


def hub_id_shaped(model: str) -> bool:
    """Whether the text has a hub id's shape, owner/name, wherever it is read from."""
    return not model.startswith((".", "/", "~")) and model.count("/") == 1


def is_hub_id(model: str) -> bool:
    """Whether -m names a hub repository: owner/name, and no such folder here."""
    try:
        exists = Path(model).expanduser().exists()
    except RuntimeError:  # '~someone/...' for a user this machine does not know
        return False
    return not exists and hub_id_shaped(model)


def cached_hub_snapshot(repo_id: str) -> Path | None:
    """The hub id's snapshot in the Hugging Face cache when it holds everything a build
    reads, else None. Never downloads (batch's skip check must not fetch a checkpoint to
    learn that its output is up to date)."""
    path = _cached_snapshot(repo_id)
    return None if path is None or missing_files(path)[0] else path


def _cached_snapshot(repo_id: str) -> Path | None:
    """The snapshot refs/main names in the Hugging Face cache, complete or not; None where the cache
    has none (or huggingface_hub is missing, or the id is invalid). Never downloads.

    huggingface_hub releases that keep each snapshot's file listing (2.x) refuse a snapshot that lacks
    some of its files (an interrupted download) with IncompleteSnapshotError; the folder it names is
    what missing_files judges: the weights may all be there, and the errors name what is not."""
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(repo_id, allow_patterns=HUB_FILES, ignore_patterns=HUB_SKIP, local_files_only=True)
        )
    except Exception as e:  # not installed, not cached, not a valid id, incomplete
        partial = getattr(e, "snapshot_path", None)
        return Path(partial) if isinstance(partial, str) and partial else None


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub read it at import, or as the environment says now."""
    try:
        from huggingface_hub import constants
    except ImportError:
        constants = None
    # huggingface_hub's own reading: anything but 1/on/yes/true (any case) is online.
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    set_now = value.upper() in ("1", "ON", "YES", "TRUE")
    return bool(getattr(constants, "HF_HUB_OFFLINE", False)) or set_now


def hub_revision(repo_id: str) -> str | None:
    """The commit the hub serves for repo_id now (metadata only), or None offline."""
    if hub_offline():
        return None
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(repo_id, timeout=10).sha
    except Exception:  # not installed, no network, gone from the hub
        return None


def _local_folder_hint(model: str) -> str | None:
    """For owner/name where a folder `owner` is here: the hub's advice alone sent a mistyped
    local path (examples/tiny-qwen for examples/tiny-qwen3) to download a repository."""
    import difflib

    owner, name = model.split("/")
    folder = Path(owner).expanduser()
    try:
        if not folder.is_dir():
            return None
        near = difflib.get_close_matches(name, [p.name for p in folder.iterdir() if p.is_dir()], n=1)
    except OSError:
        return None
    if near:
        return f"if you meant a local folder: {owner}/ here has no {name}; did you mean {owner}/{near[0]}?"
    return f"if you meant a local folder: {owner}/ here has no {name}"


def built_from(report: dict) -> str | None:
    """The -m that rebuilds what a build_report.json describes, from any folder: the checkpoint's
    resolved path (options.model may be relative to where the build ran), or the hub id that
    resolved to a cache folder. None where the report does not say."""
    try:
        source = str(report["checkpoint"]["path"])
        given = str(report["options"]["model"])
    except (KeyError, TypeError):
        return None
    if Path(source).parent.name == "snapshots" and is_hub_id(given):
        return given  # the hub id, not the cache folder it resolved to
    return source


def built_here(folder: Path) -> str | None:
    """The error for a folder this builder wrote, passed as -m (a transformers.js build has a
    config.json and no weights beside it), or None for any other folder."""
    try:
        report = json.loads((folder / "build_report.json").read_text())
    except (OSError, ValueError):
        return None
    source = built_from(report) if isinstance(report, dict) else None
    if source is None:
        return None
    return (
        f"{folder} is a folder this builder wrote (its build_report.json), not a checkpoint; "
        f"build from the checkpoint it was built from: {source}"
    )


def hub_download_command(repo_id: str) -> str:
    """The download command of the installed huggingface_hub: `hf` from 0.34 on (the only
    one in 1.x), `huggingface-cli` before."""
    import importlib.metadata

    try:
        major, minor = (int(x) for x in importlib.metadata.version("huggingface_hub").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        major, minor = 1, 0
    tool = "hf download" if (major, minor) >= (0, 34) else "huggingface-cli download"
    patterns = " ".join(f"'{p}'" for p in HUB_FILES)
    skipped = " ".join(f"'{p}'" for p in HUB_SKIP)
    return f"{tool} {repo_id} --include {patterns} --exclude {skipped}"


def missing_files(folder: Path) -> tuple[list[str], list[str]]:
    """(needed to build, only wanted) files a model folder lacks.

    A cache can hold part of a repository: transformers' AutoConfig leaves config.json
    alone, and an interrupted download leaves some shards.
    """
    needed = [] if (folder / "config.json").is_file() else ["config.json"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_bytes())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError, OSError, RecursionError):
            shards = []  # the Checkpoint says what is wrong with the index
        needed += [s for s in shards if isinstance(s, str) and not (folder / s).is_file()]
    else:
        # A cache's link to a blob that is not there (an interrupted download) is no weights file.
        weights = list(folder.glob("*.safetensors"))
        needed += [p.name for p in weights if not p.is_file()] if weights else ["*.safetensors"]
    wanted = [name for name in REQUIRED_TOKENIZER_FILES if not (folder / name).is_file()]
    return needed, wanted


def download_from_hub(repo_id: str, config_check: ConfigCheck | None = None) -> Path:
    try:
        import huggingface_hub
        from huggingface_hub import snapshot_download
    except ImportError:
        raise BuilderError(
            f"{repo_id!r} is not a local folder and huggingface_hub is not installed "
            "to fetch it; pip install huggingface_hub or pass a local folder"
        ) from None
    try:
        huggingface_hub.utils.validate_repo_id(repo_id)
    except Exception as e:  # HFValidationError
        why = str(e).rstrip(".")
        raise BuilderError(
            f"{repo_id!r} is not a local folder, and not a valid hub id ({why}); pass a folder "
            "with config.json and *.safetensors, or a hub id like Qwen/Qwen3-4B"
        ) from None
    command = hub_download_command(repo_id)
    # The cache first: works offline, and avoids a network round trip when complete.
    cached = _cached_snapshot(repo_id)
    if cached is not None and not any(missing_files(cached)):
        return cached
    if cached is not None:
        _refuse_config_before_weights(repo_id, cached / "config.json", config_check)
    if hub_offline():
        if cached is None:
            raise BuilderError(
                f"{repo_id!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
                f"download it where you have network ({command}) or pass a local folder"
                f"{_complete_snapshot_besides(repo_id, cached)}"
            )
        needed, wanted = missing_files(cached)
        if not needed:
            return cached  # only tokenizer files are missing: the build warns about them
        raise BuilderError(
            f"the Hugging Face cache holds only part of {repo_id!r} ({', '.join(needed)} "
            f"missing in {cached}) and HF_HUB_OFFLINE is set; complete it where you have "
            f"network ({command}) or pass a local folder{_complete_snapshot_besides(repo_id, cached)}"
        )
    try:
        if cached is None or not (cached / "config.json").is_file():
            config_only = snapshot_download(repo_id, allow_patterns=["config.json"], ignore_patterns=HUB_SKIP)
            _refuse_config_before_weights(repo_id, Path(config_only) / "config.json", config_check)
        path = Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, ignore_patterns=HUB_SKIP))
    except BuilderError:
        raise
    except Exception as e:
        kind = type(e).__name__
        if _token_refused(e):
            raise BuilderError(
                f"the Hugging Face hub refused the access token sent to fetch {repo_id!r} (invalid credentials): "
                "set HF_TOKEN to a valid token or unset it, or log in again (hf auth login); public models "
                "need no token"
            ) from None
        if "RepositoryNotFound" in kind or "404" in str(e):
            raise BuilderError(
                f"hub id {repo_id!r} was not found on the Hugging Face hub; "
                "check the spelling, or log in (hf auth login) for a gated model"
            ) from None
        if "GatedRepo" in kind:
            raise BuilderError(
                f"{repo_id!r} is gated on the Hugging Face hub: accept its license on the hub "
                "and log in (hf auth login)"
            ) from None
        local = _local_cache_error(e)
        if local is not None:
            from huggingface_hub import constants

            raise BuilderError(
                f"the Hugging Face cache folder {constants.HF_HUB_CACHE} cannot be used to fetch {repo_id!r} "
                f"({_os_error_text(local)}); set HF_HOME or HF_HUB_CACHE to a writable folder, "
                "or pass a local folder"
            ) from None
        if cached is not None and not missing_files(cached)[0]:
            return cached  # only tokenizer files are missing: the build warns of them, as it does offline
        partly = f" (the cache holds part of it, in {cached})" if cached is not None else ""
        raise BuilderError(
            f"{repo_id!r} is not a local folder, not complete in the Hugging Face cache{partly}, "
            f"and the hub could not be reached ({kind}); you may be offline: run {command} "
            f"where you have network, or pass a local folder{_complete_snapshot_besides(repo_id, cached)}"
        ) from None
    needed, _ = missing_files(path)
    if needed:
        # snapshot_download falls back to the cache when the hub cannot be reached.
        raise BuilderError(
            f"{repo_id!r}: {', '.join(needed)} missing in {path}, and the hub did not provide "
            f"them (offline, or not a safetensors checkpoint?); run {command} where you have "
            "network, or pass a local folder"
        )
    return path


def _refuse_config_before_weights(repo_id: str, config_path: Path, config_check: ConfigCheck | None) -> None:
    """The refusals config.json alone decides (an FP8, GPTQ or AWQ checkpoint's quantization_config, a
    key of the wrong type, an architecture no family builds), made before the weights are fetched:
    -m Qwen/Qwen3-4B-FP8 downloaded every weight shard, gigabytes, to be refused by a file of a few
    KB. A config.json that cannot be read is left to the build, which says what is wrong with it."""
    try:
        config = json.loads(config_path.read_bytes())
    except (ValueError, OSError, RecursionError):
        return
    if isinstance(config, dict):
        where = f"{repo_id}'s config.json"
        check_config(config, where)
        if config_check is not None:
            config_check(config, where)


# Errors of files and folders only. EACCES and EPERM also come from sockets (a firewall's
# refusal), so those count only with a file name; network errors, many of them OSError
# subclasses in requests, httpx and huggingface_hub, carry no such errno (gaierror's are < 0).
_FILE_ERRNOS = {errno.ENOTDIR, errno.EISDIR, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG, errno.ELOOP}
_FILE_NAMED_ERRNOS = {errno.EACCES, errno.EPERM}


def _local_cache_error(error: BaseException) -> OSError | None:
    """The error, or one it was raised from, that is about files on this machine (the cache
    folder under a file, unwritable, full), not about reaching the hub; else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and not isinstance(error, (ConnectionError, TimeoutError)):
            if error.errno in _FILE_ERRNOS or (error.errno in _FILE_NAMED_ERRNOS and error.filename):
                return error
        error = error.__cause__ or error.__context__
    return None


def _complete_snapshot_besides(repo_id: str, cached: Path | None) -> str:
    """'; ...' naming the newest complete snapshot of `repo_id` in the cache other than `cached`, the one
    refs/main names, else "". A repository's new commit moves refs/main on the next download, and a
    download cut short then leaves the complete earlier snapshot unnamed by the hub id."""
    try:
        from huggingface_hub import constants

        snapshots = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "snapshots"
        complete = [p for p in snapshots.iterdir() if p.is_dir() and p != cached and not missing_files(p)[0]]
        newest = max(complete, key=lambda p: p.stat().st_mtime, default=None)
    except (ImportError, OSError):
        return ""
    if newest is None:
        return ""
    return f"; the cache holds a complete earlier snapshot of it, which -m {newest} builds"


def _token_refused(error: BaseException) -> bool:
    """Whether the hub refused the token sent (a stale or mistyped HF_TOKEN): it answers 401 'Invalid
    credentials in Authorization header' even for public repositories, which huggingface_hub raises
    as a plain HTTP error (older releases as RepositoryNotFoundError), or folds into the error that a
    partly cached snapshot is incomplete."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if "Invalid credentials in Authorization header" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _os_error_text(error: OSError) -> str:
    where = f": {error.filename}" if error.filename else ""
    return f"{type(error).__name__}{where}: {error.strerror or error}"
