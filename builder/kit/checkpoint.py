"""Reading a Hugging Face checkpoint lazily.

config.json is parsed up front; tensors are read one at a time (or a slice of
rows at a time) from the safetensors files with plain reads, not mmap
(kit/disk_io.py read_range, O_DIRECT where it can), so the float model is never
held in memory. Tensors are numpy arrays in their stored dtype, bf16 as
ml_dtypes.bfloat16 (what onnx uses too); `to_float` widens them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import time
from pathlib import Path
from typing import NamedTuple

import ml_dtypes
import numpy as np

from builder.kit import disk_io
from builder.kit.errors import BuilderError
from builder.kit.hf_config import check_config

SUPPORTED_DTYPES = {"BF16": np.dtype(ml_dtypes.bfloat16), "F16": np.dtype(np.float16), "F32": np.dtype(np.float32)}
DTYPE_SIZES = {"BF16": 2, "F16": 2, "F32": 4}
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
# Mistral's repositories hold the weights twice: HF shards, and consolidated.safetensors in its
# own format, which the build never reads (the index, or model.safetensors, names what it reads).
HUB_SKIP = ["consolidated*"]


def configured_tie(folder: Path | None) -> bool | None:
    """config.json's tie_word_embeddings in `folder` (its text_config's, for a multimodal
    checkpoint), or None where the file or the key is not there: the builder then ties an
    lm_head the checkpoint lacks (architectures/base.py)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, TypeError):  # TypeError: no folder
        return None
    if not isinstance(config, dict):
        return None
    for section in (config.get("text_config"), config):
        if isinstance(section, dict) and isinstance(section.get("tie_word_embeddings"), bool):
            return section["tie_word_embeddings"]
    return None


def resolve_model_dir(model: str) -> Path:
    """A local folder as it is, or a hub id through the Hugging Face cache."""
    try:
        path = Path(model).expanduser()
    except RuntimeError:  # '~someone/...' for a user this machine does not know
        raise BuilderError(
            f"model path {model!r}: no home folder for {model.split('/')[0]!r}; pass the folder's full path"
        ) from None
    if path.exists():
        if not path.is_dir():
            raise BuilderError(f"model path {model!r} is a file; pass the folder that holds config.json")
        return path
    if not is_hub_id(model):
        not_hub = " (nor a hub id: those are owner/name)" if model.count("/") > 1 else ""
        raise BuilderError(
            f"model folder {model!r} does not exist{not_hub}; pass a folder with config.json "
            "and *.safetensors, or a hub id like Qwen/Qwen3-4B"
        )
    try:
        return _download_from_hub(model)
    except BuilderError as e:
        hint = _local_folder_hint(model)
        if hint:
            raise BuilderError(f"{e}; {hint}") from None
        raise


def is_hub_id(model: str) -> bool:
    """Whether -m names a hub repository: owner/name, and no such folder here."""
    try:
        exists = Path(model).expanduser().exists()
    except RuntimeError:  # '~someone/...' for a user this machine does not know
        return False
    return not exists and not model.startswith((".", "/", "~")) and model.count("/") == 1


def cached_hub_snapshot(repo_id: str) -> Path | None:
    """The hub id's snapshot in the Hugging Face cache when it holds everything a build
    reads, else None. Never downloads (batch's skip check must not fetch a checkpoint to
    learn that its output is up to date)."""
    try:
        from huggingface_hub import snapshot_download

        path = Path(
            snapshot_download(repo_id, allow_patterns=HUB_FILES, ignore_patterns=HUB_SKIP, local_files_only=True)
        )
    except Exception:  # not installed, not cached, not a valid id
        return None
    return None if missing_files(path)[0] else path


def hub_revision(repo_id: str) -> str | None:
    """The commit the hub serves for repo_id now (metadata only), or None offline."""
    try:
        from huggingface_hub import HfApi, constants

        if constants.HF_HUB_OFFLINE:
            return None
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


def _built_here(folder: Path) -> str | None:
    """The error for a folder this builder wrote, passed as -m (a transformers.js build has a
    config.json and no weights beside it), or None for any other folder."""
    try:
        report = json.loads((folder / "build_report.json").read_text())
        source = report["checkpoint"]["path"]  # resolved: options.model may be relative to elsewhere
        given = str(report["options"]["model"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if Path(source).parent.name == "snapshots" and is_hub_id(given):
        source = given  # the hub id, not the cache folder it resolved to
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
    elif not any(folder.glob("*.safetensors")):
        needed.append("*.safetensors")
    from builder.kit.tokenizer_files import REQUIRED

    wanted = [name for name in REQUIRED if not (folder / name).is_file()]
    return needed, wanted


def _download_from_hub(repo_id: str) -> Path:
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
    cached = None
    try:
        # The cache first: works offline, and avoids a network round trip when complete.
        cached = Path(
            snapshot_download(repo_id, allow_patterns=HUB_FILES, ignore_patterns=HUB_SKIP, local_files_only=True)
        )
    except Exception:
        pass
    if cached is not None and not any(missing_files(cached)):
        return cached
    offline = getattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False) or os.environ.get(
        "HF_HUB_OFFLINE", "0"
    ) not in ("0", "", "false", "False")
    if offline:
        if cached is None:
            raise BuilderError(
                f"{repo_id!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
                f"download it where you have network ({command}) or pass a local folder"
            )
        needed, wanted = missing_files(cached)
        if not needed:
            return cached  # only tokenizer files are missing: the build warns about them
        raise BuilderError(
            f"the Hugging Face cache holds only part of {repo_id!r} ({', '.join(needed)} "
            f"missing in {cached}) and HF_HUB_OFFLINE is set; complete it where you have "
            f"network ({command}) or pass a local folder"
        )
    try:
        path = Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, ignore_patterns=HUB_SKIP))
    except Exception as e:
        kind = type(e).__name__
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
        partly = f" (the cache holds part of it, in {cached})" if cached is not None else ""
        raise BuilderError(
            f"{repo_id!r} is not a local folder, not complete in the Hugging Face cache{partly}, "
            f"and the hub could not be reached ({kind}); you may be offline: run {command} "
            "where you have network, or pass a local folder"
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


class RowRange(NamedTuple):
    """Rows [start:stop) of one checkpoint tensor and where their bytes lie."""

    name: str
    start: int
    stop: int
    file: Path
    begin: int
    length: int
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def key(self) -> tuple[str, int, int]:
        return self.name, self.start, self.stop


class Checkpoint:
    """config.json plus lazily read safetensors tensors of one model folder."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.config = self._read_config()
        self._headers: dict[Path, dict] = {}
        self._shard_of = self._index_tensors()
        self.located: set[str] = set()  # every tensor a build has asked for (see unread())

    @classmethod
    def open(cls, model: str) -> Checkpoint:
        return cls(resolve_model_dir(model))

    # ---- config -------------------------------------------------------------

    def _read_config(self) -> dict:
        path = self.directory / "config.json"
        try:
            found = path.is_file()
        except OSError as e:  # a folder we may not enter
            raise could_not_read(path, e) from None
        if not found:
            plain = f"{path} is missing: {self.directory} is not a Hugging Face checkpoint folder"
            raise BuilderError(_built_here(self.directory) or plain)
        try:
            config = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise BuilderError(f"{path} is not valid JSON ({e}); re-download the checkpoint") from None
        except OSError as e:
            raise BuilderError(f"could not read {path} ({e.strerror or e})") from None
        if not isinstance(config, dict):
            raise BuilderError(f"{path} must hold a JSON object")
        return check_config(config, str(path))

    def read_json(self, name: str) -> dict | None:
        path = self.directory / name
        if not path.is_file():
            return None
        try:
            value = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, OSError):
            return None
        return value if isinstance(value, dict) else None

    # ---- tensor index -------------------------------------------------------

    def _index_tensors(self) -> dict[str, Path]:
        index_path = self.directory / "model.safetensors.index.json"
        if index_path.is_file():
            weight_map = _read_weight_map(index_path)
            shards = {name: self.directory / shard for name, shard in weight_map.items()}
            for shard in sorted(set(shards.values())):
                if not shard.is_file():
                    raise BuilderError(
                        f"{index_path.name} names shard {shard.name!r}, which is missing from "
                        f"{self.directory}; re-download the checkpoint"
                    )
            return shards
        # Without an index transformers reads model.safetensors alone, so a stray file beside it
        # (Mistral's consolidated.safetensors holds the same weights under other names) is not ours either.
        single = self.directory / "model.safetensors"
        files = [single] if single.is_file() else sorted(self.directory.glob("*.safetensors"))
        for file in files:
            if file.is_symlink() and not file.exists():  # an HF cache snapshot whose blob is gone
                raise BuilderError(f"{file} points to a file that is missing; re-download the checkpoint")
            if not file.is_file():  # a FIFO would block the first read forever; a folder fails it
                raise BuilderError(f"{file} is not a regular file; a checkpoint's *.safetensors must be files")
        if not files and not os.access(self.directory, os.R_OK):
            raise BuilderError(f"could not list {self.directory} (Permission denied); check its permissions")
        if not files:
            raise BuilderError(
                _built_here(self.directory)
                or f"no *.safetensors files in {self.directory}; only safetensors checkpoints "
                "are supported (convert .bin files with transformers' save_pretrained)"
            )
        shards = {}
        for file in files:
            for name in self._header(file)["tensors"]:
                shards[name] = file
        return shards

    def _header(self, file: Path) -> dict:
        header = self._headers.get(file)
        if header is None:
            header = _parse_header(file)
            self._headers[file] = header
        return header

    def has(self, name: str) -> bool:
        return name in self._shard_of

    def names(self) -> list[str]:
        """Every tensor name the checkpoint holds (from its index, or its shards' headers)."""
        return list(self._shard_of)

    def unread(self) -> list[str]:
        """The tensors no read has asked for since the checkpoint was opened, sorted."""
        return sorted(set(self._shard_of) - self.located)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's shape, from the headers alone (batch sizes memory requests by them)."""
        return {name: tuple(self._entry(name)[1]["shape"]) for name in self._shard_of}

    def _entry(self, name: str) -> tuple[Path, dict]:
        file = self._shard_of.get(name)
        if file is None:
            raise BuilderError(
                f"tensor {name!r} is missing from the checkpoint in {self.directory}; "
                "the checkpoint is incomplete or not the architecture its config names"
            )
        entry = self._header(file)["tensors"].get(name)
        if entry is None:
            raise BuilderError(
                f"the index names {file.name!r} for tensor {name!r}, but that shard does not "
                "hold it; re-download the checkpoint"
            )
        return file, entry

    def tensor(self, name: str, expect_shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The whole tensor, in its stored dtype."""
        return self.rows(name, 0, None, expect_shape)

    def rows(self, name: str, start: int, stop: int | None, expect_shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Rows [start:stop) of a tensor, read without touching the other rows.

        Plain reads (not mmap): the bytes land in memory we free right after
        use, so resident memory stays at one chunk instead of growing with
        every page of the checkpoint we have touched. While a ReadAhead is
        attached (builder.kit.readahead), a read it has already made is handed over.
        """
        where = self.locate(name, start, stop, expect_shape)
        if self.ahead is not None and where.length:
            rows = self.ahead.take(where)
            if rows is not None:
                return rows
        t = time.perf_counter()
        rows = self.read(where, page_cache=self.page_cache)
        if self.phases is not None:
            self.phases.add("read", time.perf_counter() - t)
            self.phases.add("read_wait", time.perf_counter() - t)
        return rows

    def locate(self, name: str, start: int, stop: int | None, expect_shape: tuple[int, ...] | None = None) -> RowRange:
        """Where rows [start:stop) of a tensor lie, with the checks a read makes first."""
        file, entry = self._entry(name)
        self.located.add(name)
        dtype, shape = entry["dtype"], tuple(entry["shape"])
        if dtype not in SUPPORTED_DTYPES:
            raise BuilderError(
                f"tensor {name!r} in {file.name} has dtype {dtype}; supported: "
                + ", ".join(SUPPORTED_DTYPES)
                + " (quantized checkpoints are not supported)"
            )
        if expect_shape is not None and shape != tuple(expect_shape):
            raise BuilderError(
                f"tensor {name!r} has shape {list(shape)} but config.json implies "
                f"{list(expect_shape)}; the weights do not match the config"
            )
        rows_total = shape[0] if shape else 1
        stop = rows_total if stop is None else min(stop, rows_total)
        start = min(start, stop)
        row_shape = shape[1:]
        row_bytes = math.prod(row_shape) * DTYPE_SIZES[dtype]
        begin = self._header(file)["data_start"] + entry["data_offsets"][0] + start * row_bytes
        out_shape = (stop - start, *row_shape) if shape else ()
        return RowRange(name, start, stop, file, begin, (stop - start) * row_bytes, SUPPORTED_DTYPES[dtype], out_shape)

    ahead = None  # a ReadAhead serving reads it made in advance, while one is attached
    phases = None  # a progress.Phases the build's own reads are timed in
    page_cache = False  # read through the page cache (BuildOptions.page_cache)

    @staticmethod
    def read(where: RowRange, buffer=None, page_cache: bool = False) -> np.ndarray:
        """The rows `where` names, read from disk now (thread-safe: one open file per read),
        into `buffer` (disk_io.aligned_buffer of at least where.length + disk_io.SLACK
        bytes) if given. Bytes the page cache lacks bypass it unless `page_cache` (see disk_io)."""
        if not where.length:  # the shape checks' empty reads
            return np.empty(where.shape, where.dtype)
        try:
            data, got = disk_io.read_range(where.file, where.begin, where.length, buffer, page_cache)
        except OSError as e:
            raise BuilderError(f"could not read tensor {where.name!r} from {where.file} ({e.strerror or e})") from None
        if got != where.length:
            raise BuilderError(f"{where.file} ends inside tensor {where.name!r}; the file is truncated: re-download it")
        return data.view(where.dtype).reshape(where.shape)

    # ---- identity -----------------------------------------------------------

    def fingerprint(self, content: bool = False) -> str:
        """The checkpoint's identity, for batch's skip-if-up-to-date.

        config.json's bytes; the name and bytes of each tokenizer file and of
        generation_config.json, which the output copies or takes its search defaults
        and eos ids from; then per weight file its name, header and what tells
        a re-save apart even with the same names and shapes: a hub-cache file's
        blob name (the hash the cache stores it under), else size, mtime_ns and
        inode, or with `content` a SHA-256 of its bytes (reads the whole file).
        """
        from builder.kit.tokenizer_files import TOKENIZER_FILES

        cached = getattr(self, "_fingerprints", {}).get(content)
        if cached is not None:  # the first one is kept: a build takes it before reading weights
            return cached
        digest = hashlib.sha256((self.directory / "config.json").read_bytes())
        for name in TOKENIZER_FILES:
            path = self.directory / name
            try:
                if path.is_file():
                    digest.update(name.encode())
                    digest.update(hashlib.sha256(path.read_bytes()).digest())
            except OSError as e:
                raise could_not_read(path, e) from None
        for file in sorted(set(self._shard_of.values())):
            digest.update(file.name.encode())
            digest.update(_header_bytes(file))
            digest.update(_file_identity(file, content).encode())
        self._fingerprints = {**getattr(self, "_fingerprints", {}), content: digest.hexdigest()[:16]}
        return self._fingerprints[content]


def to_float(tensor: np.ndarray, dtype=np.float32) -> np.ndarray:
    """A checkpoint tensor in float32 or float16; bf16 is widened through float32 exactly."""
    if tensor.dtype == SUPPORTED_DTYPES["BF16"]:
        # bf16 is the top half of a float32: a shift, ~4x faster than ml_dtypes' cast.
        wide = np.left_shift(tensor.view(np.uint16), np.uint32(16), dtype=np.uint32).view(np.float32)
        return wide.astype(dtype, copy=False)
    return tensor.astype(dtype, copy=False)


def _file_identity(file: Path, content: bool) -> str:
    resolved = file.resolve()
    if file.is_symlink() and resolved.parent.name == "blobs":  # HF cache: blobs/<sha256 or git sha1>
        return f"blob {resolved.name}"
    if content:
        digest = hashlib.sha256()
        with open(resolved, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
        return f"sha256 {digest.hexdigest()}"
    st = resolved.stat()
    return f"stat {st.st_size} {st.st_mtime_ns} {st.st_ino}"


def _read_weight_map(index_path: Path) -> dict[str, str]:
    """The index's tensor name -> shard file name map, checked: a shard must be a plain file
    name in the checkpoint folder (the map is only ever written by save_pretrained)."""

    def invalid(why: str) -> BuilderError:
        return BuilderError(
            f"{index_path} is not a valid safetensors index ({why}); re-download the "
            "checkpoint, or delete the index if the folder holds a single model.safetensors"
        )

    try:
        index = json.loads(index_path.read_bytes(), object_pairs_hook=_reject_duplicates)
    except _DuplicateKey as e:
        raise invalid(f"key {e.args[0]!r} appears twice") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise invalid(f"not JSON: {e}") from None
    except OSError as e:
        raise BuilderError(f"could not read {index_path} ({e.strerror or e})") from None
    if not isinstance(index, dict) or "weight_map" not in index:
        raise invalid("no 'weight_map'")
    weight_map = index["weight_map"]
    if not isinstance(weight_map, dict):
        raise invalid(f"'weight_map' is a {type(weight_map).__name__}, not a mapping of tensor names to files")
    if not weight_map:
        raise invalid("'weight_map' is empty")
    for name, shard in weight_map.items():
        if (
            not isinstance(shard, str)
            or not shard
            or shard in (".", "..")
            or "/" in shard
            or "\\" in shard
            or "\0" in shard
        ):
            raise invalid(f"tensor {name!r} maps to {shard!r}, not a file name in the checkpoint folder")
    return weight_map


def _header_bytes(file: Path) -> bytes:
    try:
        with open(file, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100_000_000:
                raise ValueError("header length is implausible")
            header = f.read(length)
        if len(header) != length:
            raise ValueError("file ends inside the header")
        return header
    except (PermissionError, IsADirectoryError) as e:
        raise could_not_read(file, e) from None
    except (OSError, struct.error, ValueError) as e:
        raise BuilderError(
            f"{file} is not a readable safetensors file ({e}); it may be truncated or corrupt: re-download it"
        ) from None


def could_not_read(path: Path, error: OSError) -> BuilderError:
    """A checkpoint file the OS would not let us read (a shared cache owned by another user)."""
    advice = "check its permissions" if isinstance(error, PermissionError) else "check the file and its disk"
    return BuilderError(f"could not read {path} ({error.strerror or error}); {advice}")


# Every dtype the safetensors format defines, in bits per element: an entry with any other
# dtype is a corrupt header. Which of them a build can read is SUPPORTED_DTYPES.
SAFETENSORS_DTYPE_BITS = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "C64": 64,
}


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicate = next(k for k in keys if keys.count(k) > 1)
        raise _DuplicateKey(duplicate)
    return dict(pairs)


class _DuplicateKey(ValueError):
    pass


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse_header(file: Path) -> dict:
    """Tensor table of a safetensors file, validated as strictly as the safetensors library.

    A header that points at the wrong bytes (overlapping or short offsets, a gap, a tail
    nobody owns) would build a model from garbage without a word, so every entry must
    have a known dtype and a shape, the entries must tile the data buffer exactly in
    offset order, and each must be exactly numel x itemsize bytes long.
    """
    raw = _header_bytes(file)

    def corrupt(why: str) -> BuilderError:
        return BuilderError(f"{file} has a corrupt safetensors header ({why}); re-download it")

    if not raw.startswith(b"{"):  # the format's rule (the library checks it too)
        raise corrupt("it does not start with '{'")

    try:
        table = json.loads(raw, object_pairs_hook=_reject_duplicates)
    except _DuplicateKey as e:
        raise corrupt(f"tensor {e.args[0]!r} is listed twice") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise corrupt(f"not JSON: {e}") from None
    if not isinstance(table, dict):
        raise corrupt("not a JSON object")
    metadata = table.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise corrupt("__metadata__ is not an object of strings")
    data_start = 8 + len(raw)
    buffer = file.stat().st_size - data_start
    spans = []
    for name, entry in table.items():
        if not isinstance(entry, dict):
            raise corrupt(f"the entry for {name!r} is not an object")
        for key in ("dtype", "shape", "data_offsets"):
            if key not in entry:
                raise corrupt(f"the entry for {name!r} has no {key!r}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPE_BITS:
            raise corrupt(f"tensor {name!r} has dtype {dtype!r}, which safetensors does not define")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise corrupt(f"tensor {name!r} has shape {shape!r}; expected a list of non-negative integers")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_count(o) for o in offsets)
            or offsets[0] > offsets[1]
        ):
            raise corrupt(f"tensor {name!r} has data_offsets {offsets!r}; expected [begin, end] with 0 <= begin <= end")
        bits = math.prod(shape) * SAFETENSORS_DTYPE_BITS[dtype]
        if bits % 8 or offsets[1] - offsets[0] != bits // 8:
            raise corrupt(
                f"tensor {name!r} is {dtype} {shape}, {bits / 8:g} bytes, but its data_offsets "
                f"{offsets} span {offsets[1] - offsets[0]} bytes"
            )
        spans.append((offsets[0], offsets[1], name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            what = "overlaps the tensor before it" if begin < position else f"leaves bytes {position}-{begin} unowned"
            raise corrupt(f"tensor {name!r} at data_offsets [{begin}, {end}] {what}")
        position = end
    if position > buffer:
        raise BuilderError(
            f"{file} is truncated ({file.stat().st_size} bytes, the header says the data ends "
            f"at byte {data_start + position}); re-download it"
        )
    if position != buffer:
        raise corrupt(f"the tensors cover {position} bytes of a {buffer}-byte data buffer")
    return {"tensors": table, "data_start": data_start}
