"""Reading a Hugging Face checkpoint lazily.

config.json is parsed up front; tensors are read one at a time (or a slice of
rows at a time) from memory-mapped safetensors files, so the float model is
never held in memory. Tensors are numpy arrays in their stored dtype, bf16 as
ml_dtypes.bfloat16 (what onnx uses too); `to_float` widens them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from builder.kit.errors import BuilderError

SUPPORTED_DTYPES = {"BF16": np.dtype(ml_dtypes.bfloat16), "F16": np.dtype(np.float16), "F32": np.dtype(np.float32)}
DTYPE_SIZES = {"BF16": 2, "F16": 2, "F32": 4}
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]


def resolve_model_dir(model: str) -> Path:
    """A local folder as it is, or a hub id through the Hugging Face cache."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise BuilderError(f"model path {model!r} is a file; pass the folder that holds config.json")
        return path
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise BuilderError(f"model folder {model!r} does not exist; pass a folder with config.json "
                           "and *.safetensors, or a hub id like Qwen/Qwen3-4B")
    return _download_from_hub(model)


def _download_from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise BuilderError(f"{repo_id!r} is not a local folder and huggingface_hub is not installed "
                           "to fetch it; pip install huggingface_hub or pass a local folder") from None
    try:
        # The cache first: works offline, and avoids a network round trip when cached.
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=True))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise BuilderError(f"{repo_id!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
                           "download it where you have network (huggingface-cli download "
                           f"{repo_id}) or pass a local folder")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as e:
        kind = type(e).__name__
        if "RepositoryNotFound" in kind or "404" in str(e):
            raise BuilderError(f"hub id {repo_id!r} was not found on the Hugging Face hub; "
                               "check the spelling, or log in for a gated model") from None
        raise BuilderError(f"{repo_id!r} is not a local folder, not in the Hugging Face cache, and the "
                           f"hub could not be reached ({kind}); you may be offline: download it where "
                           "you have network or pass a local folder") from None


class Checkpoint:
    """config.json plus lazily read safetensors tensors of one model folder."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.config = self._read_config()
        self._headers: dict[Path, dict] = {}
        self._shard_of = self._index_tensors()

    @classmethod
    def open(cls, model: str) -> "Checkpoint":
        return cls(resolve_model_dir(model))

    # ---- config -------------------------------------------------------------

    def _read_config(self) -> dict:
        path = self.directory / "config.json"
        if not path.is_file():
            raise BuilderError(f"{path} is missing: {self.directory} is not a Hugging Face checkpoint folder")
        try:
            config = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BuilderError(f"{path} is not valid JSON ({e}); re-download the checkpoint") from None
        if not isinstance(config, dict):
            raise BuilderError(f"{path} must hold a JSON object")
        return config

    def read_json(self, name: str) -> dict | None:
        path = self.directory / name
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None

    # ---- tensor index -------------------------------------------------------

    def _index_tensors(self) -> dict[str, Path]:
        index_path = self.directory / "model.safetensors.index.json"
        if index_path.is_file():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise BuilderError(f"{index_path} is not a valid safetensors index ({e})") from None
            shards = {name: self.directory / shard for name, shard in weight_map.items()}
            for shard in sorted(set(shards.values())):
                if not shard.is_file():
                    raise BuilderError(f"{index_path.name} names shard {shard.name}, which is missing from "
                                       f"{self.directory}; re-download the checkpoint")
            return shards
        files = sorted(self.directory.glob("*.safetensors"))
        if not files:
            raise BuilderError(f"no *.safetensors files in {self.directory}; only safetensors checkpoints "
                               "are supported (convert .bin files with transformers' save_pretrained)")
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

    def _entry(self, name: str) -> tuple[Path, dict]:
        file = self._shard_of.get(name)
        if file is None:
            raise BuilderError(f"tensor {name!r} is missing from the checkpoint in {self.directory}; "
                               "the checkpoint is incomplete or not the architecture its config names")
        entry = self._header(file)["tensors"].get(name)
        if entry is None:
            raise BuilderError(f"the index names {file.name} for tensor {name!r}, but that shard does not "
                               "hold it; re-download the checkpoint")
        return file, entry

    def tensor(self, name: str, expect_shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The whole tensor, in its stored dtype."""
        return self.rows(name, 0, None, expect_shape)

    def rows(self, name: str, start: int, stop: int | None,
             expect_shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Rows [start:stop) of a tensor, read without touching the other rows.

        Plain reads (not mmap): the bytes land in memory we free right after
        use, so resident memory stays at one chunk instead of growing with
        every page of the checkpoint we have touched.
        """
        file, entry = self._entry(name)
        dtype, shape = entry["dtype"], tuple(entry["shape"])
        if dtype not in SUPPORTED_DTYPES:
            raise BuilderError(f"tensor {name!r} in {file.name} has dtype {dtype}; supported: "
                               + ", ".join(SUPPORTED_DTYPES) + " (quantized checkpoints are not supported)")
        if expect_shape is not None and shape != tuple(expect_shape):
            raise BuilderError(f"tensor {name!r} has shape {list(shape)} but config.json implies "
                               f"{list(expect_shape)}; the weights do not match the config")
        rows_total = shape[0] if shape else 1
        stop = rows_total if stop is None else min(stop, rows_total)
        start = min(start, stop)
        row_shape = shape[1:]
        row_bytes = math.prod(row_shape) * DTYPE_SIZES[dtype]
        begin = self._header(file)["data_start"] + entry["data_offsets"][0] + start * row_bytes
        length = (stop - start) * row_bytes
        buffer = bytearray(length)
        try:
            with open(file, "rb") as f:
                f.seek(begin)
                got = f.readinto(buffer)
        except OSError as e:
            raise BuilderError(f"could not read tensor {name!r} from {file} ({e.strerror or e})") from None
        if got != length:
            raise BuilderError(f"{file} ends inside tensor {name!r}; the file is truncated: re-download it")
        out_shape = (stop - start, *row_shape) if shape else ()
        return np.frombuffer(buffer, dtype=SUPPORTED_DTYPES[dtype]).reshape(out_shape)

    # ---- identity -----------------------------------------------------------

    def fingerprint(self) -> str:
        """A cheap identity of the checkpoint: config + every shard's header and size.

        Headers carry each tensor's name, dtype, shape and offsets, so a changed
        checkpoint changes the fingerprint without hashing gigabytes.
        """
        digest = hashlib.sha256((self.directory / "config.json").read_bytes())
        for file in sorted(set(self._shard_of.values())):
            digest.update(file.name.encode())
            digest.update(str(file.stat().st_size).encode())
            digest.update(_header_bytes(file))
        return digest.hexdigest()[:16]


def to_float(tensor: np.ndarray, dtype=np.float32) -> np.ndarray:
    """A checkpoint tensor in float32 or float16; bf16 is widened through float32 exactly."""
    if tensor.dtype == SUPPORTED_DTYPES["BF16"]:
        # bf16 is the top half of a float32: a shift, ~4x faster than ml_dtypes' cast.
        wide = np.left_shift(tensor.view(np.uint16), np.uint32(16), dtype=np.uint32).view(np.float32)
        return wide.astype(dtype, copy=False)
    return tensor.astype(dtype, copy=False)


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
    except (OSError, struct.error, ValueError) as e:
        raise BuilderError(f"{file} is not a readable safetensors file ({e}); it may be truncated "
                           "or corrupt: re-download it") from None


def _parse_header(file: Path) -> dict:
    """Tensor table of a safetensors file, checked against the file's size."""
    raw = _header_bytes(file)
    try:
        table = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BuilderError(f"{file} has a corrupt safetensors header ({e}); re-download it") from None
    if not isinstance(table, dict):
        raise BuilderError(f"{file} has a corrupt safetensors header; re-download it")
    table.pop("__metadata__", None)
    data_start = 8 + len(raw)
    size = file.stat().st_size
    for name, entry in table.items():
        try:
            end = data_start + int(entry["data_offsets"][1])
            entry["shape"] = [int(d) for d in entry["shape"]]
        except (KeyError, TypeError, ValueError, IndexError):
            raise BuilderError(f"{file}: header entry for {name!r} is malformed; re-download it") from None
        if end > size:
            raise BuilderError(f"{file} is truncated ({size} bytes, tensor {name!r} ends at byte {end}); "
                               "re-download it")
    return {"tensors": table, "data_start": data_start}
