"""Property-based checks of malformed inputs (issue 15), shared by the suite
(tests/test_fuzz_inputs.py, a bounded number of cases) and scripts/fuzz_inputs.py (more).

Every generated input goes through what a build reads, in process, and must end in
one of two ways: a BuilderError (the CLI's one-line error, exit 2), or a build whose
output is complete. Any other exception is a traceback a user would see. Where an
outside oracle exists it is used: a safetensors file the safetensors library refuses
must be refused here too (never built from), and tensors read from a file it accepts
must equal what it reads.
"""

from __future__ import annotations

import atexit
import json
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, assume
from hypothesis import strategies as st

from builder.kit.checkpoint import Checkpoint
from builder.kit.errors import BuilderError, BuildInterrupted
from builder.kit.hf_config import KEYS
from support.synthetic import TINY_CONFIGS, make_checkpoint

FUZZ_SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)

# ---- value strategies ---------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64),
    st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["silu", "16", "Qwen3ForCausalLM", "", "llama3", "linear", "default", "yarn"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8,
)


def _json_text(value) -> str:
    # NaN and Infinity as Python's json writes them: hub files never have them, a fuzzer may.
    return json.dumps(value)


# ---- a shared tiny checkpoint -------------------------------------------------------------

_BASE: dict[str, Path] = {}


def base_checkpoint(kind: str = "single") -> Path:
    """A tiny Qwen3 checkpoint made once per process (single file, or sharded)."""
    if kind not in _BASE:
        root = Path(tempfile.mkdtemp(prefix="fuzz-base-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)  # made once per process, so not a fixture
        shard = 40_000 if kind == "sharded" else None
        _BASE[kind] = make_checkpoint(
            root / kind, TINY_CONFIGS["qwen3"], **({"shard_size_bytes": shard} if shard else {})
        )
    return _BASE[kind]


def copy_checkpoint(kind: str, into: Path) -> Path:
    folder = into / "ckpt"
    shutil.copytree(base_checkpoint(kind), folder)
    return folder


def build_or_error(ckpt: Path, work: Path) -> str:
    """'built' or 'error'; anything else propagates (a traceback). Checks that a failed
    build leaves nothing and a finished one is complete."""
    from builder import build

    out = work / "out"
    try:
        build(model=str(ckpt), output=str(out), show_progress=False)
    except BuildInterrupted:  # Ctrl-C, caught by the build as it stopped: hypothesis stops for this one
        raise KeyboardInterrupt from None
    except BuilderError as e:
        assert "\n" not in str(e), str(e)
        assert not out.exists(), "a failed build left its output"
        assert not list(work.glob(".builder-staging-*")), "a failed build left its staging folder"
        return "error"
    assert all(
        (out / name).is_file() for name in ("model.onnx", "model.onnx.data", "genai_config.json", "build_report.json")
    )
    return "built"


# ---- config.json ----------------------------------------------------------------------

config_edits = st.lists(
    st.one_of(
        st.tuples(
            st.just("set"),
            st.sampled_from(sorted(KEYS) + ["architectures", "rope_scaling", "text_config"]),
            json_values,
        ),
        st.tuples(st.just("delete"), st.sampled_from(sorted(KEYS) + ["architectures"]), st.none()),
        st.tuples(
            st.just("rope"),
            st.sampled_from(
                ["rope_type", "factor", "rope_theta", "low_freq_factor", "original_max_position_embeddings"]
            ),
            json_values,
        ),
    ),
    min_size=1,
    max_size=4,
)
config_files = st.one_of(
    st.tuples(st.just("edits"), config_edits),
    st.tuples(st.just("json"), json_values),
    st.tuples(st.just("bytes"), st.binary(max_size=64)),
)


def check_config_file(case) -> str:
    kind, payload = case
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt = copy_checkpoint("single", work)
        path = ckpt / "config.json"
        corrupt = False
        if kind == "edits":
            config = json.loads(path.read_text())
            for op, key, value in payload:
                if op == "set":
                    config[key] = value
                elif op == "delete":
                    config.pop(key, None)
                else:
                    scaling = config.get("rope_scaling")
                    config["rope_scaling"] = {**(scaling if isinstance(scaling, dict) else {}), key: value}
            path.write_text(_json_text(config))
        elif kind == "json":
            path.write_text(_json_text(payload))
            corrupt = not isinstance(payload, dict)
        else:
            path.write_bytes(payload)
            corrupt = True  # at most 64 bytes: never a whole config
        outcome = build_or_error(ckpt, work)
        assert not (corrupt and outcome == "built"), f"built from a corrupt config.json: {payload!r}"
        return outcome


# ---- safetensors headers --------------------------------------------------------------


def _read(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


entry_fields = st.sampled_from(["dtype", "shape", "data_offsets"])
header_edits = st.lists(
    st.one_of(
        st.tuples(
            st.just("offsets"), st.integers(0, 30), st.tuples(st.integers(-4, 300_000), st.integers(-4, 300_000))
        ),
        st.tuples(st.just("shift"), st.integers(0, 30), st.integers(-8, 8)),
        st.tuples(
            st.just("dtype"),
            st.integers(0, 30),
            st.sampled_from(["F16", "F32", "BF16", "F64", "I8", "U8", "F8_E4M3", "Q4", "bf16", ""]),
        ),
        st.tuples(st.just("shape"), st.integers(0, 30), st.lists(st.integers(-2, 600), max_size=3)),
        st.tuples(st.just("drop_field"), st.integers(0, 30), entry_fields),
        st.tuples(st.just("set_field"), st.integers(0, 30), st.tuples(entry_fields, json_values)),
        st.tuples(st.just("drop_entry"), st.integers(0, 30), st.none()),
        st.tuples(st.just("swap"), st.integers(0, 30), st.integers(0, 30)),
        st.tuples(st.just("duplicate"), st.integers(0, 30), st.none()),
        st.tuples(st.just("truncate"), st.integers(0, 30), st.integers(1, 5000)),
        st.tuples(st.just("append"), st.integers(0, 30), st.integers(1, 64)),
        st.tuples(st.just("length"), st.integers(0, 30), st.integers(0, 2**64 - 1)),
        st.tuples(st.just("metadata"), st.integers(0, 30), json_values),
        st.tuples(st.just("pad"), st.integers(0, 30), st.sampled_from([b" ", b"\n", b"\0", b"  \t"])),
    ),
    min_size=1,
    max_size=3,
)


def _library_reads(path: Path) -> dict[str, np.ndarray] | None:
    """What the safetensors library reads from the file, or None if it refuses it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "np") as f:
            return {name: f.get_tensor(name) for name in f.keys()}
    except Exception:  # SafetensorError, and numpy's refusals of a dtype it lacks (bf16)
        pass
    try:  # bf16: numpy has no such dtype; read it through torch when the library accepts the file
        import torch  # noqa: F401

        with safe_open(str(path), "pt") as f:
            return {name: _as_numpy(f.get_tensor(name)) for name in f.keys()}
    except Exception:
        return None


def _as_numpy(t) -> np.ndarray:
    import torch

    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def _bits(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return a.view(np.uint8).reshape(-1) if a.size else np.zeros(0, np.uint8)


def check_header_edits(edits) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt = copy_checkpoint("single", work)
        path = ckpt / "model.safetensors"
        header, data = _read(path)
        names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
        text_suffix = text_prefix = ""
        length_override = None
        for op, index, arg in edits:
            live = [n for n in names if n in header]
            if not live:
                break
            name = live[index % len(live)]
            entry = header[name]
            if op == "offsets":
                entry["data_offsets"] = list(arg)
            elif op == "shift" and isinstance(entry.get("data_offsets"), list):
                entry["data_offsets"] = [x + arg if isinstance(x, int) else x for x in entry["data_offsets"]]
            elif op == "dtype":
                entry["dtype"] = arg
            elif op == "shape":
                entry["shape"] = arg
            elif op == "drop_field":
                entry.pop(arg, None)
            elif op == "set_field":
                entry[arg[0]] = arg[1]
            elif op == "swap":  # two entries trade places: valid when their sizes agree
                other = header[live[arg % len(live)]]
                entry["data_offsets"], other["data_offsets"] = other.get("data_offsets"), entry.get("data_offsets")
            elif op == "drop_entry":
                del header[name]
            elif op == "duplicate":
                text_suffix += f", {json.dumps(name)}: {json.dumps(entry)}"
            elif op == "truncate":
                data = data[: max(0, len(data) - arg)]
            elif op == "append":
                data += b"\0" * arg
            elif op == "length":
                length_override = arg
            elif op == "metadata":
                header["__metadata__"] = arg
            elif op == "pad":
                text_prefix = arg.decode()
        text = json.dumps(header)
        if text_suffix:
            text = text[:-1] + text_suffix + "}"
        raw = (text_prefix + text).encode()
        n = len(raw) if length_override is None else length_override
        path.write_bytes(struct.pack("<Q", n) + raw + data)

        truth = _library_reads(path)
        try:
            checkpoint = Checkpoint(ckpt)
            ours = {name: checkpoint.tensor(name) for name in checkpoint.names()}
        except BuilderError as e:
            assert "\n" not in str(e)
            return "refused"
        assert truth is not None, f"read a file the safetensors library refuses: edits {edits}"
        assert set(ours) == set(truth), "a different set of tensors than the library's"
        for name, values in ours.items():
            assert np.array_equal(_bits(values), _bits(truth[name])), f"{name}: other bytes than the library's"
        return "read"


# ---- shard index ----------------------------------------------------------------------

index_edits = st.one_of(
    st.tuples(st.just("weight_map"), json_values),
    st.tuples(st.just("file"), json_values),
    st.tuples(st.just("bytes"), st.binary(max_size=64)),
    st.tuples(
        st.just("entries"),
        st.lists(
            st.tuples(
                st.integers(0, 40),
                st.one_of(
                    st.none(),
                    json_values,
                    st.sampled_from(
                        [
                            "model-00001-of-00003.safetensors",
                            "model-00002-of-00003.safetensors",
                            "model-00003-of-00003.safetensors",
                            "missing.safetensors",
                            "../x.safetensors",
                            "config.json",
                            "",
                        ]
                    ),
                ),
            ),
            min_size=1,
            max_size=4,
        ),
    ),
)


def check_index_edit(case) -> str:
    kind, payload = case
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt = copy_checkpoint("sharded", work)
        path = ckpt / "model.safetensors.index.json"
        index = json.loads(path.read_text())
        if kind == "weight_map":
            index["weight_map"] = payload
            path.write_text(_json_text(index))
        elif kind == "file":
            path.write_text(_json_text(payload))
        elif kind == "bytes":
            path.write_bytes(payload)
        else:
            names = sorted(index["weight_map"])
            for i, shard in payload:
                name = names[i % len(names)]
                if shard is None:
                    index["weight_map"].pop(name, None)
                else:
                    index["weight_map"][name] = shard
            path.write_text(_json_text(index))
        truth = {}
        from safetensors import safe_open

        for shard in sorted(ckpt.glob("model-*.safetensors")):
            import torch  # noqa: F401

            with safe_open(str(shard), "pt") as f:
                truth.update({name: _as_numpy(f.get_tensor(name)) for name in f.keys()})
        try:
            checkpoint = Checkpoint(ckpt)
            for name in checkpoint.names():
                try:
                    values = checkpoint.tensor(name)
                except BuilderError:
                    continue  # e.g. "the index names a shard that does not hold it"
                assert name in truth and np.array_equal(_bits(values), _bits(truth[name])), (
                    f"{name}: read from the wrong bytes through the index"
                )
        except BuilderError as e:
            assert "\n" not in str(e)
            return "refused"
        return "read"


# ---- batch YAML (validation only: builder.batch_schema.load_batch) ---------------------------

yaml_keys = st.sampled_from(
    [
        "jobs",
        "defaults",
        "matrix",
        "output_root",
        "verify",
        "model",
        "precision",
        "ep",
        "output",
        "block_size",
        "context_length",
        "name",
        "int8_layers",
        "x",
    ]
)
yaml_docs = st.recursive(
    st.one_of(scalars, yaml_keys),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(yaml_keys, inner, max_size=4)),
    max_leaves=10,
)


def mostly(good, bad):
    """`good` nine times in ten: well-formed enough that the checks past the first one run."""
    return st.integers(0, 9).flatmap(lambda i: bad if i == 0 else good)


option_values = st.fixed_dictionaries(
    {},
    optional={
        "precision": st.sampled_from(["int4", "fp16", "fp32", "int3", 4, None]),
        "ep": st.sampled_from(["cpu", "webgpu", "cuda", "tpu", None]),
        "block_size": st.sampled_from([32, 64, 48, "32", None, True]),
        "context_length": st.one_of(st.integers(-2, 10**10), st.text(max_size=4)),
        "int8_layers": st.one_of(st.lists(st.text(max_size=6), max_size=2), st.text(max_size=6)),
        "output": st.sampled_from(["out/a", "out/a", "", None, "../x", 3]),
        "verify": st.sampled_from([True, False, "yes", None]),
    },
)
option_values = mostly(option_values, st.builds(lambda o, x: {**o, "x": x}, option_values, scalars))
job_entries = st.builds(
    lambda model, options: {"model": model, **options},
    st.sampled_from(["./ckpt", "org/model", "", None, 12, "bad id!"]),
    option_values,
)
jobs_lists = st.lists(job_entries, min_size=1, max_size=3)
matrices = st.dictionaries(
    st.sampled_from(["precision", "ep", "model"]),
    st.lists(st.sampled_from(["int4", "fp16", "cpu", "webgpu", "./ckpt"]), max_size=3),
    max_size=2,
)
structured = st.fixed_dictionaries(
    {"jobs": mostly(jobs_lists, st.one_of(job_entries, scalars))},
    optional={
        "defaults": mostly(option_values, scalars),
        "matrix": mostly(matrices, scalars),
        "output_root": st.sampled_from(["out", "out", "", None, 5, "~/x"]),
        "verify": st.sampled_from([True, False, None, "no"]),
    },
)
yaml_files = st.one_of(
    st.tuples(st.just("doc"), structured, st.sampled_from(["utf-8", "utf-16", "utf-8-sig"])),
    st.tuples(st.just("doc"), yaml_docs, st.sampled_from(["utf-8", "utf-16", "utf-16-le", "utf-8-sig", "latin-1"])),
    st.tuples(st.just("text"), st.text(max_size=80), st.sampled_from(["utf-8", "utf-16"])),
    st.tuples(st.just("bytes"), st.binary(max_size=80), st.just("")),
)


def check_batch_file(case) -> str:
    import yaml

    from builder.batch_schema import load_batch

    kind, payload, encoding = case
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = work / "jobs.yaml"
        (work / "ckpt").symlink_to(base_checkpoint())  # what ./ckpt in a generated job names
        if kind == "doc":
            text = yaml.safe_dump(payload, allow_unicode=True)
            try:
                path.write_bytes(text.encode(encoding))
            except UnicodeEncodeError:
                assume(False)
        elif kind == "text":
            path.write_bytes(payload.encode(encoding, errors="surrogatepass"))
        else:
            path.write_bytes(payload)
        before = sorted(p.name for p in work.iterdir())
        try:
            load_batch(path)
            outcome = "valid"
        except BuilderError:
            outcome = "refused"
        assert sorted(p.name for p in work.iterdir()) == before, "validation wrote files"
        return outcome
