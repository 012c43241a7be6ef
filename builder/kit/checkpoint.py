"""Reading a Hugging Face checkpoint lazily.

config.json is parsed up front; tensors are read one at a time (or a slice of
rows at a time) from the safetensors files with plain reads, not mmap
(kit/disk_io.py read_range, O_DIRECT where it can), so the float model is never
held in memory. Tensors are numpy arrays in their stored dtype, bf16 as
ml_dtypes.bfloat16 (what onnx uses too); `to_float` widens them. Where the
folder comes from is kit/model_source.py; how its headers and index are
checked, kit/safetensors_format.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import NamedTuple

import ml_dtypes
import numpy as np

from builder.kit import disk_io
from builder.kit.errors import BUILD_FROM_FLOAT, BuilderError
from builder.kit.hf_config import check_config
from builder.kit.model_source import ConfigCheck, built_here, resolve_model_dir
from builder.kit.safetensors_format import could_not_read, header_bytes, parse_header, read_weight_map

SUPPORTED_DTYPES = {"BF16": np.dtype(ml_dtypes.bfloat16), "F16": np.dtype(np.float16), "F32": np.dtype(np.float32)}
DTYPE_SIZES = {"BF16": 2, "F16": 2, "F32": 4}
# What stands in for a Linear's `weight` in checkpoints quantized ahead of time: GPTQ and AWQ (qweight,
# beside qzeros and scales) and compressed-tensors' packed formats (weight_packed).
QUANTIZED_SUFFIXES = (".qweight", ".weight_packed")


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
    identity: tuple | None = None  # the file's disk_io.identity when its header was read

    @property
    def key(self) -> tuple[str, int, int]:
        return self.name, self.start, self.stop


class Checkpoint:
    """config.json plus lazily read safetensors tensors of one model folder."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.config = self._read_config()
        self._headers: dict[Path, dict] = {}
        self.read_warnings: list[str] = []  # how the folder was read, for the plan to print
        self._aliases: dict[str, str] = {}  # see alias()
        self._shard_of = self._index_tensors()
        adapter = _adapter(self.directory)
        if adapter:  # transformers with peft applies it; the build reads the base weights alone
            self.read_warnings.append(
                f"{self.directory} also holds a PEFT adapter ({adapter}), which the build does not apply: this "
                "is the base model alone; to build the fine-tuned one, merge the adapter into it "
                "(merge_and_unload), save that and build it"
            )
        self.located: set[str] = set()  # every tensor a build has asked for (see unread())
        self._rows_read: dict[str, list[tuple[int, int]]] = {}  # name -> [start, stop) of each read

    @classmethod
    def open(cls, model: str, config_check: ConfigCheck | None = None) -> Checkpoint:
        """A folder, or a hub id fetched into the cache; config_check judges a hub id's config.json
        before its weights are fetched (model_source.ConfigCheck)."""
        return cls(resolve_model_dir(model, config_check))

    # ---- config -------------------------------------------------------------

    def _read_config(self) -> dict:
        path = self.directory / "config.json"
        try:
            found = path.is_file()
        except OSError as e:  # a folder we may not enter
            raise could_not_read(path, e) from None
        if not found:
            plain = f"{path} is missing: {self.directory} is not a Hugging Face checkpoint folder"
            adapter, inside = _adapter(self.directory), _checkpoints_inside(self.directory)
            if inside:
                shown = ", ".join(p.name for p in inside[:3]) + (
                    f" and {len(inside) - 3} more" if len(inside) > 3 else ""
                )
                plain += f"; it holds checkpoint folders ({shown}): pass one of them, e.g. -m {inside[0]}"
            elif adapter:
                plain = (
                    f"{self.directory} holds a PEFT adapter ({adapter}) and no config.json: an adapter is a "
                    "change to a base model, not a checkpoint; merge it into its base model "
                    f"(PeftModel.from_pretrained(base, '{self.directory}').merge_and_unload(), then "
                    "save_pretrained(MERGED) and the tokenizer with it) and build MERGED"
                )
            raise BuilderError(built_here(self.directory) or _cache_repo_hint(self.directory) or plain)
        try:
            config = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise BuilderError(f"{path} is not valid JSON ({e}); re-download the checkpoint") from None
        except OSError as e:
            raise BuilderError(f"could not read {path} ({e.strerror or e})") from None
        if not isinstance(config, dict):
            raise BuilderError(f"{path} must hold a JSON object (fix or re-download config.json)")
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
        # transformers' order: model.safetensors if it is a file, else the index. A folder holding both
        # is one save_pretrained over another (unsharded then sharded leaves the old file, sharded
        # then unsharded the old index), and transformers loads model.safetensors from it.
        index_path = self.directory / "model.safetensors.index.json"
        single = self.directory / "model.safetensors"
        if index_path.is_file() and single.is_file():
            self.read_warnings.append(
                f"{self.directory} holds both model.safetensors and {index_path.name}: built from "
                "model.safetensors, which transformers loads too; delete whichever of the two saves is stale"
            )
        elif index_path.is_file():
            weight_map = read_weight_map(index_path)
            files = sorted({self.directory / shard for shard in weight_map.values()})
            for shard in files:
                if not shard.is_file():
                    raise BuilderError(
                        f"{index_path.name} names shard {shard.name!r}, which is missing from "
                        f"{self.directory}; re-download the checkpoint"
                    )
            # transformers loads every tensor of every shard the index names, whatever the map says of
            # each, so a tensor the map leaves out or places in another shard is read all the same.
            shards = self._tensors_in(files)
            absent = [name for name in weight_map if name not in shards]
            if absent:
                raise BuilderError(
                    f"{index_path.name} maps tensor {absent[0]!r} to {weight_map[absent[0]]!r}, but no shard "
                    f"it names holds it ({len(absent)} such tensor{'s' * (len(absent) > 1)}); "
                    "re-download the checkpoint"
                )
            return shards
        # Without an index transformers reads model.safetensors alone, so a stray file beside it
        # (Mistral's consolidated.safetensors holds the same weights under other names) is not ours either.
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
                built_here(self.directory)
                or f"no *.safetensors files in {self.directory}; only safetensors checkpoints "
                "are supported (convert .bin files with transformers' save_pretrained)"
            )
        return self._tensors_in(files)

    def _tensors_in(self, files: list[Path]) -> dict[str, Path]:
        """Each tensor name -> the file holding it. A name in two files is refused: which copy a
        loader takes is an accident of order (transformers: the last; this folder may hold two saves)."""
        shards: dict[str, Path] = {}
        for file in files:
            for name in self._header(file)["tensors"]:
                other = shards.setdefault(name, file)
                if other != file:
                    raise BuilderError(
                        f"tensor {name!r} is stored twice in {self.directory}, in {other.name} and {file.name}: "
                        "the folder holds two saves of the checkpoint; keep one set of files (and its index)"
                    )
        return shards

    def _header(self, file: Path) -> dict:
        header = self._headers.get(file)
        if header is None:
            header = parse_header(file)
            self._headers[file] = header
        return header

    def alias(self, name: str, stored: str) -> None:
        """Read tensor `name` from the one stored as `stored`: a tied model saved with safetensors'
        save_model keeps one name of the shared tensor, and transformers ties the other to it."""
        self._shard_of[name] = self._shard_of[stored]
        self._aliases[name] = stored

    def has(self, name: str) -> bool:
        return name in self._shard_of

    def names(self) -> list[str]:
        """Every tensor name the checkpoint holds (from its index, or its shards' headers)."""
        return list(self._shard_of)

    def unread(self) -> list[str]:
        """The tensors not read whole since the checkpoint was opened, sorted: those no read asked
        for, and those of which some rows were never read (a family that reads a fused tensor in
        RowSlices, with one slice taken twice and another not at all)."""
        return sorted(name for name in self._shard_of if name not in self.located or self.unread_rows(name))

    def unread_rows(self, name: str) -> list[tuple[int, int]]:
        """The [start, stop) row ranges of a located tensor that no read covered."""
        total = self.rows_total(name)
        gaps, at = [], 0
        for start, stop in sorted(self._rows_read.get(name, [])):
            if start > at:
                gaps.append((at, start))
            at = max(at, stop)
        if at < total:
            gaps.append((at, total))
        return gaps

    def rows_total(self, name: str) -> int:
        shape = self._entry(name)[1]["shape"]
        return shape[0] if shape else 1

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's shape, from the headers alone (batch sizes memory requests by them)."""
        return {name: tuple(self._entry(name)[1]["shape"]) for name in self._shard_of}

    def _entry(self, name: str) -> tuple[Path, dict]:
        file = self._shard_of.get(name)
        if file is None:
            raise BuilderError(
                self._stored_quantized(name)
                or (
                    f"tensor {name!r} is missing from the checkpoint in {self.directory}; "
                    "the checkpoint is incomplete or not the architecture its config names"
                )
            )
        return file, self._header(file)["tensors"][self._aliases.get(name, name)]

    def _stored_quantized(self, name: str) -> str | None:
        """The refusal for a float weight stored as another format's packed tensors: GPTQ and AWQ
        checkpoints saved by AutoGPTQ or AutoAWQ keep their settings in quantize_config.json or
        quant_config.json, not in config.json's quantization_config, and were refused as incomplete,
        which sent the user to download them again."""
        if not name.endswith(".weight"):
            return None
        stem = name[: -len(".weight")]
        stored = next((stem + suffix for suffix in QUANTIZED_SUFFIXES if stem + suffix in self._shard_of), None)
        if stored is None:
            return None
        return (
            f"the checkpoint in {self.directory} stores {name!r} quantized (as {stored!r}: packed "
            f"quantized weights, such as GPTQ's or AWQ's), which the builder does not read; {BUILD_FROM_FLOAT}"
        )

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
            # Anything else in a weight's place (F8_E4M3 with FP8's scales, I8, U8 for bitsandbytes, U32 for
            # MLX) is a quantized checkpoint's: the user needs to know which checkpoint to build instead.
            why = (
                "save it in one of those"
                if dtype == "F64"
                else f"a quantized checkpoint's weights, which the builder does not read; {BUILD_FROM_FLOAT}"
            )
            raise BuilderError(
                f"tensor {name!r} in {file.name} has dtype {dtype}; supported: {', '.join(SUPPORTED_DTYPES)} ({why})"
            )
        if expect_shape is not None and shape != tuple(expect_shape):
            raise BuilderError(
                f"tensor {name!r} has shape {list(shape)} but config.json implies "
                f"{list(expect_shape)}; the weights do not match the config"
            )
        rows_total = shape[0] if shape else 1
        stop = rows_total if stop is None else min(stop, rows_total)
        start = min(start, stop)
        if stop > start:
            self._rows_read.setdefault(name, []).append((start, stop))
        row_shape = shape[1:]
        row_bytes = math.prod(row_shape) * DTYPE_SIZES[dtype]
        begin = self._header(file)["data_start"] + entry["data_offsets"][0] + start * row_bytes
        out_shape = (stop - start, *row_shape) if shape else ()
        length = (stop - start) * row_bytes
        identity = self._header(file).get("identity")
        return RowRange(name, start, stop, file, begin, length, SUPPORTED_DTYPES[dtype], out_shape, identity)

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
            data, got = disk_io.read_range(where.file, where.begin, where.length, buffer, page_cache, where.identity)
        except disk_io.FileChanged:
            raise BuilderError(
                f"{where.file} changed while the build read it (re-saved, replaced or written to); "
                "build again once the checkpoint is no longer being written"
            ) from None
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
            digest.update(header_bytes(file))
            digest.update(_file_identity(file, content).encode())
        self._fingerprints = {**getattr(self, "_fingerprints", {}), content: digest.hexdigest()[:16]}
        return self._fingerprints[content]


def _checkpoints_inside(folder: Path) -> list[Path]:
    """The folders with a config.json right inside `folder`, the latest Trainer checkpoint-N first: -m
    named a Trainer's output_dir (checkpoint-500/, checkpoint-1000/) or the folder above a download."""

    def step(path: Path) -> int:
        tail = path.name.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    try:
        found = [p for p in folder.iterdir() if p.is_dir() and (p / "config.json").is_file() and not built_here(p)]
    except OSError:
        return []
    return sorted(found, key=lambda p: (-step(p), p.name))


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def _adapter(folder: Path) -> str | None:
    """The PEFT adapter files a folder holds, and the base model adapter_config.json names, or None.
    A LoRA fine-tune's output folder was met with 'config.json is missing', and an adapter saved beside
    its base model's weights was left out without a word."""
    try:
        files = [name for name in ADAPTER_FILES if (folder / name).is_file()]
    except OSError:
        return None
    if not files:
        return None
    try:
        base = json.loads((folder / "adapter_config.json").read_bytes()).get("base_model_name_or_path")
    except (OSError, ValueError, RecursionError, AttributeError):
        base = None
    return ", ".join(files) + (f"; base model {base!r}" if isinstance(base, str) and base else "")


def _cache_repo_hint(folder: Path) -> str | None:
    """A Hugging Face cache's repo folder given for its checkpoint: say which folder holds it."""
    if not folder.name.startswith("models--") or not (folder / "snapshots").is_dir():
        return None
    repo_id = "/".join(folder.name.split("--")[1:])
    return (
        f"{folder} is a Hugging Face cache folder, not a checkpoint: pass the hub id {repo_id!r} "
        f"(-m {repo_id}), or one of its snapshots/<revision> folders"
    )


def to_float(tensor: np.ndarray, dtype=np.float32) -> np.ndarray:
    """A checkpoint tensor in float32 or float16; bf16 is widened through float32 exactly.
    Values beyond float16 become inf without numpy's warning: the build's NaN/Inf check names
    the tensor in a warning of its own."""
    with np.errstate(over="ignore", invalid="ignore"):
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
