"""Record today's outputs (data bytes + logits) of tiny builds, before the refactor."""

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path[:0] = ["/work/main", "/work/main/tests"]
from parity_cases import ALL_CASES

from architectures.registry import builder_class_for
from builder import BuildOptions
from builder.kit.checkpoint import Checkpoint
from builder.pipeline import run
from builder.verify import onnx_logits, onnx_session
from support.synthetic import TINY_CONFIGS, make_checkpoint

PIN = {"target_ort": "1.27", "qkv_packing": "separate", "mlp_packing": "separate", "silu": "quickgelu"}
COMBOS = [
    ("fp32", "cpu", {}),
    ("int4", "cpu", {}),
    ("int4", "cpu", {"symmetric": False, "accuracy_level": 0}),
    ("int8", "cpu", {}),
    ("int4", "webgpu", PIN),
    ("fp16", "webgpu", PIN),
    ("int4", "cuda", {"target_ort": "1.31", "qkv_packing": "packed-split"}),
]
root = Path(tempfile.mkdtemp())
out = {}
logits = {}
rng = np.random.default_rng(0)
ids = rng.integers(0, 470, size=(1, 7))
for name in ALL_CASES:
    ck = make_checkpoint(root / name, TINY_CONFIGS[name], dtype="bfloat16", seed=0)
    for prec, ep, extra in COMBOS:
        key = f"{name}/{prec}/{ep}" + "".join(f"/{k}={v}" for k, v in sorted(extra.items()))
        c = Checkpoint(ck)
        try:
            opts = BuildOptions(
                model=str(ck), precision=prec, ep=ep, output=str(root / "o" / key.replace("/", "_")), **extra
            )
            r = run(builder_class_for(c.config)(c, opts), show_progress=False)
        except Exception as e:
            out[key] = {"error": str(e)[:200]}
            continue
        data = (r.output / "model.onnx.data").read_bytes()
        out[key] = {"data_sha256": hashlib.sha256(data).hexdigest(), "nodes": r.report["nodes"]["total"]}
        if ep == "cpu":
            s = onnx_session(r.output)
            lg = onnx_logits(s, ids, [5, 9, 11])
            logits[key.replace("/", "|")] = np.concatenate([x.reshape(-1, x.shape[-1]) for x in lg])
Path("/work/main/tests/golden/outputs.json").write_text(
    json.dumps({"input_ids": ids.tolist(), "decode": [5, 9, 11], "builds": out}, indent=1, sort_keys=True) + "\n"
)
np.savez_compressed("/work/main/tests/golden/logits.npz", **logits)
print(len(out), sum("error" in v for v in out.values()))
