"""What each execution provider and ONNX Runtime version can run.

Everything the graph writer may only emit on some targets is decided here, so
the rules sit in one table instead of `if ep == ...` branches across the code.
Sources are named next to each entry: ../shared/REFERENCE.md (measured) or our
own runs (docs/packing.md).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from builder.kit.errors import BuilderError
from builder.kit.options import BuildOptions, parse_version

# The block size in which the WebGPU EP computes MatMulNBits wrong at accuracy level 4 (int8
# activations), where the in-width K is no multiple of it: its DP4A kernel (taken where K is a multiple
# of 128, in prefill, and at every step with fp32 activations) reads the scales of a row whose last
# block is partly full as if K held whole blocks. Such nodes gave logits with nothing of the model's,
# where level 0 matched; K a multiple of 256 stayed within the CPU EP's own level-4 error, as did
# smaller blocks. Seen on the plugin EP 0.4.0 (SwiftShader and an H100), onnxruntime-webgpu 1.27 and
# transformers.js 4.3 in Chromium (docs/packing.md#accuracy-level-on-webgpu-in-blocks-of-256-session-42).
WEBGPU_LEVEL4_WRONG_BLOCK = 256

# The package that carries each EP's runtime, and the release a build targets when none is
# installed (the newest on PyPI when this table was written; 1.32 came later and changes no
# FEATURES entry, so targets stay at 1.31 and batch does not rebuild for it).
EP_RUNTIMES: dict[str, tuple[str, tuple[int, int]]] = {
    "cpu": ("onnxruntime", (1, 31)),
    "cuda": ("onnxruntime-gpu", (1, 31)),
    # WebGPU has two runtimes (docs/packing.md#webgpu-runtimes). The default is onnxruntime
    # with the WebGPU plugin EP (onnxruntime-ep-webgpu, 2026-09): onnxruntime-genai 0.18 needs
    # onnxruntime >= 1.31, and onnxruntime-webgpu stops at 1.27 with a conflicting
    # `onnxruntime` module, so the plugin is what a genai user installs. Targets up to
    # WEBGPU_LAST_MONOLITHIC mean the onnxruntime-webgpu package and stay selectable.
    "webgpu": ("onnxruntime-ep-webgpu", (1, 31)),
    # Windows-only, not checked here. 1.24 (1.24.4): the newest onnxruntime-directml on PyPI, and the
    # runtime onnxruntime-genai-directml 0.12.2 installs with (0.13 and later need 1.25+, not on PyPI);
    # no dml feature changes above 1.23, but below 1.24 --logits auto keeps every position.
    "dml": ("onnxruntime-directml", (1, 24)),
}
WEBGPU_LAST_MONOLITHIC = (1, 27)
# The first runtime an onnxruntime-genai that reads logits [B, 1, V] as the last token's runs on:
# genai 0.12 requires onnxruntime(-gpu, -directml) >= 1.24.1, and 0.11.4, the last for 1.23 (and for
# Python 3.10, which onnxruntime left after 1.23.2), fails on such a graph ("Got invalid dimensions
# for output: logits"). Older targets get every position (plan.wants_last_logits).
GENAI_LAST_LOGITS_ORT = (1, 24)
# The first onnxruntime-genai that reads such a graph: 0.12.0 and 0.12.1 fail on it as 0.11.4 does
# (run beside onnxruntime 1.24.1, which pip installs them with), and 0.8-0.11 install beside any
# newer onnxruntime, whose version alone then sent their users a folder they could not run.
GENAI_LAST_LOGITS = (0, 12, 2)
# The onnxruntime-genai distributions: one per EP family, all built from one source release.
GENAI_PACKAGES = ("onnxruntime-genai", "onnxruntime-genai-cuda", "onnxruntime-genai-directml")


def installed_genai_versions() -> list[str]:
    """The versions of the onnxruntime-genai distributions installed here (GENAI_PACKAGES), usually one."""
    import importlib.metadata

    versions = []
    for package in GENAI_PACKAGES:
        try:
            versions.append(importlib.metadata.version(package))
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def installed_genai_without_last_logits() -> str | None:
    """The version of an installed onnxruntime-genai older than GENAI_LAST_LOGITS, if any: the runtime
    that will run a build made for the installed onnxruntime, and that fails on last-token logits."""
    for installed in installed_genai_versions():
        release = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", installed)
        if release and tuple(int(part or 0) for part in release.groups()) < GENAI_LAST_LOGITS:
            return installed
    return None


# The newest onnxruntime the FEATURES table was checked against (PyPI, 2026-12). A newer
# --target-ort builds with what this one runs, which a later release may have changed.
NEWEST_KNOWN_ORT = (1, 32)

# The ONNX Runtime inside transformers.js 4.3 (@huggingface/transformers 4.3.2 pins
# onnxruntime-node 1.30.0 and onnxruntime-web 1.31.0-dev): the default target of a
# --format transformers.js build, whatever runtime Python has installed. webgpu: the
# browser's WebGPU EP (its wasm CPU EP for the few nodes ORT keeps on the CPU).
TRANSFORMERS_JS_ORT: dict[str, tuple[int, int]] = {"cpu": (1, 30), "webgpu": (1, 31), "cuda": (1, 30), "dml": (1, 30)}

# (ep, precision) -> why the combination is refused up front. Everything else is built.
REFUSED = {
    ("cuda", "fp32"): "GroupQueryAttention has no fp32 kernel on CUDA, so the model would not load; "
    "build fp16 or int4 for cuda, or fp32 for cpu",
    ("dml", "fp32"): "GroupQueryAttention has no fp32 kernel on DirectML; build fp16 or int4 for dml",
    ("dml", "int8"): "MatMulNBits with 8 bits is not implemented on DirectML; build int4 or fp16 for dml",
    ("cpu", "bf16"): "bf16 is not verified to load on any target here; build fp16 or fp32",
    ("cuda", "bf16"): "bf16 is not verified to load on any target here; build fp16 (same memory) for cuda",
    ("webgpu", "bf16"): "WebGPU has no bf16 kernels; build int4 or fp16 for webgpu",
    ("dml", "bf16"): "DirectML has no bf16 kernels here; build int4 or fp16 for dml",
}

# Feature -> {ep: first ORT version that runs it}. Absent ep: never.
FEATURES: dict[str, dict[str, tuple[int, int]]] = {
    # GQA computes rotary itself (do_rotary=1). DirectML's GQA does not, so dml gets
    # RotaryEmbedding nodes and a position_ids input, as the reference builder does.
    "gqa_rotary": {"cpu": (1, 17), "cuda": (1, 17), "webgpu": (1, 20)},
    # GQA inputs 14/15 (q_norm_weight, k_norm_weight). The CPU kernel loads them and then
    # fails at Run; onnxruntime-webgpu 1.27.0 rejects the 16-input node at load (REFERENCE 3).
    # CUDA: the providers library of onnxruntime-gpu 1.28.0, 1.29.0 and 1.30.0 (as 1.31.1) checks
    # the two inputs ("q_norm_weight and k_norm_weight must be provided together"), so its kernel
    # reads them and does not drop the norms as an older 14-input kernel would (not run here).
    "gqa_qk_norm": {"cuda": (1, 28), "webgpu": (1, 28)},
    # com.microsoft BranchwiseRMSNorm: per-head RMSNorm on [B,S,H*D] with a [D] scale.
    # Seen in 1.31.1. 0.8-0.9x the time of Reshape/SLN/Reshape in isolation (REFERENCE 2),
    # but whole-model decode was slower with it (docs/packing.md#cpu): opt-in only.
    "branchwise_rmsnorm": {"cpu": (1, 31)},
    # com.microsoft QuickGelu with alpha=1 is SiLU in one node instead of Sigmoid+Mul
    # (bit-identical on CPU). Where `auto` uses it is builder.kit.layout's call (measured);
    # DirectML is left out: not verified here.
    "quick_gelu": {"cpu": (1, 17), "cuda": (1, 17), "webgpu": (1, 20)},
    # com.microsoft MoE/QMoE with interleaved SwiGLU (swiglu_fusion=1), as Qwen3-MoE needs:
    # QMoE verified on ORT 1.31.1's CPU kernels (1.30's refuses its accuracy_level attribute);
    # onnxruntime-webgpu 1.27 rejects the QMoE node at load (docs/results/webgpu-parity-run3.json).
    # The float MoE of fp32/fp16 builds: a tiny Qwen3-MoE's logits on the CPU wheels 1.23.2 to
    # 1.31.1 equal 1.32.0's to 2.2e-6 (fp32) and 0 (fp16), while 1.20.1 rejects the MoE node at
    # load, so transformers.js 4.3's onnxruntime-node 1.30 runs them. CUDA/DML not verified here.
    "moe_swiglu": {"cpu": (1, 23)},
    "qmoe_swiglu": {"cpu": (1, 31)},
    # Gated DeltaNet linear attention (Qwen3.5, Qwen3-Next): com.microsoft CausalConvWithState with
    # channels_last, LinearAttention (gated_delta, q/k at fewer heads than v), LinearAttentionGate,
    # GatedRMSNorm and BranchwiseRMSNorm, checked against transformers on each pip release's CPU
    # kernels: CausalConvWithState (channels-first) and LinearAttention run from <= 1.26;
    # channels_last, LinearAttentionGate and GatedRMSNorm from 1.30 (1.29 has their schemas, no CPU
    # kernel); BranchwiseRMSNorm from 1.31. (GatedDeltaNet, one op for all of it, has a CPU kernel from
    # 1.32 but ran 3-9x slower there: not used.) On WebGPU, the plugin EP (onnxruntime-ep-webgpu 0.4.0,
    # ORT >= 1.31) runs CausalConvWithState/LinearAttention/LinearAttentionGate with graph capture on
    # (scripts/check_webgpu.py: logits and genai greedy tokens vs transformers); onnxruntime-webgpu 1.27
    # has no such kernels. CUDA kernels exist upstream, unverified here.
    "linear_attention": {"cpu": (1, 31), "webgpu": (1, 31)},
    # GQA's local_window_size as transformers' sliding_window: the last W positions, the current one
    # included. Before 1.24 the CPU kernel attended W + 1 (a lone GQA node, uniform scores: 1.20.1 and
    # 1.23.2 gave 5 positions at W = 4, 1.24.4 to 1.32.0 gave 4). Older CUDA/WebGPU kernels are not
    # checked here, so they need 1.24 too; DirectML never reads it (builder.kit.plan).
    "gqa_window": {"cpu": (1, 24), "cuda": (1, 24), "webgpu": (1, 24), "dml": (1, 18)},
    # GQA with the packed QKV in `query` (key/value empty).
    "gqa_packed_qkv": {"cpu": (1, 17), "cuda": (1, 17), "webgpu": (1, 20)},
    # An int4 embedding table: com.microsoft GatherBlockQuantized with uint8-packed data and its `bits`
    # attribute. The schema took uint8 data from 1.22 and `bits` from 1.23: the CPU wheels 1.20.1 to 1.22.1
    # refused such a node when loading the graph, whatever the EP (a schema check), and 1.23.2 to 1.32.0
    # loaded it (builder/load_check.py). Below it the table is float (plan.float_embedding_below).
    "gather_block_quantized": {"cpu": (1, 23), "cuda": (1, 23), "webgpu": (1, 23), "dml": (1, 23)},
    # MatMulNBits with bits=8 (-p int8, --int8-layers): the CPU kernel of 1.20.1 and 1.21.1 refused it
    # when the session was made ("Only 4b quantization is supported"); 1.22.1 on made it. A kernel
    # check, so other EPs are left to their own floors (not checked here).
    "matmul_nbits_8bit": {"cpu": (1, 22), "cuda": (1, 17), "webgpu": (1, 20), "dml": (1, 18)},
    # Decode steps captured once and replayed (genai_config enableGraphCapture). The plugin EP
    # on 1.31 ran the reference's capture build 1.18-1.54x faster than uncaptured graphs;
    # onnxruntime-webgpu 1.27 ran it at 0.45x (REFERENCE 3c) and on an H100 8x slower (3b), so
    # capture is on by default only from the plugin EP's targets. cuda/dml graphs: not measured.
    "graph_capture": {"webgpu": (1, 28)},
}


# Where the runtimes inside transformers.js 4.3 differ from the table above (measured with
# @huggingface/transformers 4.3.2, tiny checkpoints, tokens vs transformers; tests/test_transformers_js.py):
# BranchwiseRMSNorm is registered in neither onnxruntime-node 1.30 nor onnxruntime-web 1.31-dev
# (so per-head norms are written Reshape/SimplifiedLayerNormalization/Reshape); without it, the Gated
# DeltaNet ops (CausalConvWithState, LinearAttention, LinearAttentionGate) ran Qwen3.5 in Node on
# onnxruntime-node 1.30 and in headless Chromium on onnxruntime-web's WebGPU EP (SwiftShader).
TRANSFORMERS_JS_FEATURES: dict[str, dict[str, tuple[int, int]]] = {
    "branchwise_rmsnorm": {},
    "linear_attention": {"cpu": (1, 30), "webgpu": (1, 31)},
}


# The oldest ONNX Runtime each EP can be targeted at: every build emits GroupQueryAttention
# (com.microsoft) and, quantized, MatMulNBits; their CPU and CUDA kernels first shipped in
# 1.17, the WebGPU EP's in 1.20 (gqa_rotary above). DirectML's GroupQueryAttention came in
# 1.18 (not run here, like every dml entry). Below these, no build would load.
MIN_ORT_VERSION: dict[str, tuple[int, int]] = {"cpu": (1, 17), "cuda": (1, 17), "webgpu": (1, 20), "dml": (1, 18)}


def installed_runtime_version(ep: str) -> tuple[int, int] | None:
    """Version of the installed runtime that runs `ep`, if any.

    webgpu: onnxruntime's version when the plugin EP is installed beside it, else the
    onnxruntime-webgpu package's.
    """
    import importlib.metadata

    def version(package: str) -> tuple[int, int] | None:
        try:
            installed = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None
        # Its major.minor: packages carry suffixes (1.23.0.dev20250101, 1.22.0+cu121) that a
        # --target-ort is refused for.
        release = re.match(r"(\d+)\.(\d+)", installed)
        return (int(release[1]), int(release[2])) if release else None

    if ep == "webgpu":
        if version("onnxruntime-ep-webgpu"):
            return version("onnxruntime")
        return version("onnxruntime-webgpu")
    return version(EP_RUNTIMES[ep][0])


def default_ort_version(ep: str) -> tuple[int, int]:
    return installed_runtime_version(ep) or EP_RUNTIMES[ep][1]


@dataclass(frozen=True)
class Target:
    """An execution provider at one ONNX Runtime version, for one precision."""

    ep: str
    precision: str
    ort_version: tuple[int, int]
    io_choice: str = "auto"  # --io-dtype
    graph_capture: bool = False
    transformers_js: bool = False  # --format transformers.js: the ONNX Runtime inside transformers.js

    @classmethod
    def unchecked(cls, options: BuildOptions) -> Target:
        """The target the options name, before from_options' refusals: for a family to say
        first when it cannot build for this EP at all, which is the more useful refusal."""
        version = (
            parse_version(options.target_ort, "--target-ort") if options.target_ort else default_ort_version(options.ep)
        )
        if options.format == "transformers.js" and not options.target_ort:
            version = TRANSFORMERS_JS_ORT[options.ep]
        return cls(
            options.ep,
            options.precision,
            version,
            options.io_dtype,
            transformers_js=options.format == "transformers.js",
        )

    @classmethod
    def from_options(cls, options: BuildOptions) -> Target:
        target = cls.unchecked(options)
        version = target.ort_version
        floor = MIN_ORT_VERSION[options.ep]
        if version < floor:
            source = (
                f"--target-ort {options.target_ort}"
                if options.target_ort
                else f"the installed {EP_RUNTIMES[options.ep][0]} {target.version_text}"
            )
            raise BuilderError(
                f"{source}: -e {options.ep} builds need ONNX Runtime >= {floor[0]}.{floor[1]}, "
                "the first release with the GroupQueryAttention and MatMulNBits kernels every "
                f"build uses; target {floor[0]}.{floor[1]} or newer"
            )
        reason = REFUSED.get((options.ep, options.precision))
        if reason:
            raise BuilderError(f"-p {options.precision} -e {options.ep} cannot work: {reason}")
        if target.io_dtype == np.float32 and options.ep in ("cuda", "dml"):
            raise BuilderError(
                f"--io-dtype fp32 -e {options.ep} cannot work: GroupQueryAttention has no fp32 "
                f"kernel on {options.ep}; use --io-dtype fp16 or auto"
            )
        capture = target.supports("graph_capture") and options.format == "genai"
        if options.graph_capture == "on" and not capture:
            raise BuilderError(
                f"--graph-capture on: {target.runtime} does not capture graphs here (only webgpu "
                "with the plugin EP, --target-ort >= 1.28, --format genai); use --graph-capture "
                "off or auto"
            )
        return dataclasses.replace(target, graph_capture=capture and options.graph_capture != "off")

    @property
    def runtime(self) -> str:
        """The runtime package(s) this target means, e.g. for reports and AUTO_LAYOUT."""
        if self.transformers_js:
            package = "onnxruntime-web" if self.ep == "webgpu" else "onnxruntime-node"
            if self.ort_version == TRANSFORMERS_JS_ORT[self.ep]:
                return f"transformers.js 4.3 ({package} {self.version_text})"
            return f"transformers.js with {package} {self.version_text}"  # not the one 4.3 pins
        if self.ep == "webgpu":
            if self.ort_version <= WEBGPU_LAST_MONOLITHIC:
                return f"onnxruntime-webgpu {self.version_text}"
            return f"onnxruntime {self.version_text} + onnxruntime-ep-webgpu"
        return f"{EP_RUNTIMES[self.ep][0]} {self.version_text}"

    @property
    def layout_key(self) -> str:
        """AUTO_LAYOUT's row: the EP, with webgpu split by runtime (their fusions differ)."""
        if self.ep == "webgpu" and self.ort_version <= WEBGPU_LAST_MONOLITHIC:
            return "webgpu-1.27"
        return self.ep

    @property
    def moe_feature(self) -> str:
        """The feature a MoE family's expert nodes need at the build's precision: QMoE for int4/int8,
        float MoE else (expert_feature where --float-layers keeps experts float)."""
        return self.expert_feature(self.precision in ("int4", "int8"))

    @staticmethod
    def expert_feature(quantized: bool) -> str:
        """QMoE nodes (ONNX Runtime 1.31 on cpu) for quantized experts, float MoE (1.23) else."""
        return "qmoe_swiglu" if quantized else "moe_swiglu"

    def moe_refusal(
        self, family: str, also: tuple[str, str] | None = None, quantized_experts: bool | None = None
    ) -> str:
        """Why `family`'s MoE/QMoE nodes cannot be built for this target, and what to pick. `also`:
        (feature, its nodes) that the family's builds need as well, such as the hybrids' linear
        attention: the version named is then one that runs the whole graph, not the MoE nodes alone.
        quantized_experts: whether any experts are QMoE nodes (default: by the precision)."""
        quantized = self.precision in ("int4", "int8") if quantized_experts is None else quantized_experts
        feature = self.expert_feature(quantized)
        features = [feature] + ([also[0]] if also else [])
        first = max(self._feature_table(f).get("cpu", (99, 0)) for f in features)
        need = f"ONNX Runtime >= {first[0]}.{first[1]} on cpu"
        if self.ep != "cpu":
            if also:
                return (
                    f"{family} builds only for -e cpu here: its MoE/QMoE nodes were checked on the CPU kernels "
                    f"only, and with its {also[1]} it needs {need}; got -e {self.ep}"
                )
            return (
                f"{family} builds only for -e cpu here: its MoE/QMoE nodes need {need} (checked on "
                f"the CPU kernels only); got -e {self.ep}"
            )
        # Name the nodes this runtime lacks: a float MoE build below 1.31 fails on its linear attention only.
        experts = f"{self.precision} experts (QMoE nodes)" if quantized and self.transformers_js else "MoE/QMoE nodes"
        missing = [experts] if not self.supports(feature) else []
        if also and not self.supports(also[0]):
            missing.append(also[1])
        nodes = " and ".join(missing)
        if self.transformers_js:
            # Only the quantized experts (QMoE) need 1.31: a float build's MoE nodes run on the
            # onnxruntime-node 1.30 of transformers.js 4.3, so that is a way out too, where the
            # rest of the graph runs there.
            floats_run = self.supports("moe_swiglu") and (also is None or self.supports(also[0]))
            floats = (
                "build -p fp16 or -p fp32 (float MoE nodes, which it runs), " if quantized and floats_run else "build "
            )
            return (
                f"{family}: its {nodes} need {need}, and --format transformers.js targets "
                f"{self.runtime}; {floats}--format genai, or pass --target-ort {first[0]}.{first[1]} if "
                "your transformers.js runs a newer ONNX Runtime"
            )
        version = f"{first[0]}.{first[1]}"
        return f"{family}: its {nodes} need {need}; got {self.runtime}; pass --target-ort {version} or newer"

    def supports(self, feature: str) -> bool:
        first = self._feature_table(feature).get(self.ep)
        return first is not None and self.ort_version >= first

    def supported_where(self, feature: str) -> str:
        """Where `feature` runs for this kind of target, for a refusal: 'cpu (onnxruntime-node
        >= 1.30) and webgpu (onnxruntime-web >= 1.31)' for transformers.js."""
        places = []
        for ep, (major, minor) in self._feature_table(feature).items():
            if self.transformers_js:
                runtime = "onnxruntime-web" if ep == "webgpu" else "onnxruntime-node"
            else:
                runtime = "onnxruntime" if ep == "webgpu" else EP_RUNTIMES[ep][0]
            plugin = " with the onnxruntime-ep-webgpu plugin" if ep == "webgpu" and not self.transformers_js else ""
            places.append(f"{ep} ({runtime} >= {major}.{minor}{plugin})")
        return " and ".join(places) if places else "no target"

    def _feature_table(self, feature: str) -> dict[str, tuple[int, int]]:
        table = TRANSFORMERS_JS_FEATURES if self.transformers_js and feature in TRANSFORMERS_JS_FEATURES else FEATURES
        return table[feature]

    @property
    def version_text(self) -> str:
        return f"{self.ort_version[0]}.{self.ort_version[1]}"

    # ---- dtypes -------------------------------------------------------------

    @property
    def io_dtype(self) -> np.dtype:
        """Activation dtype: fp32 for fp32 builds and for int4/int8 on CPU, else fp16.

        MatMulNBits on CPU is fastest with fp32 activations; GPUs want fp16.
        --io-dtype overrides it for int4/int8 (fp32 on webgpu for GPUs without shader-f16).
        """
        if self.io_choice in ("fp16", "fp32"):
            return np.dtype(np.float32 if self.io_choice == "fp32" else np.float16)
        if self.precision == "fp32" or (self.ep == "cpu" and self.precision in ("int4", "int8")):
            return np.dtype(np.float32)
        return np.dtype(np.float16)

    @property
    def io_onnx_type(self) -> int:
        return TensorProto.FLOAT if self.io_dtype == np.float32 else TensorProto.FLOAT16

    @property
    def default_accuracy_level(self) -> int:
        # Level 4 (int8 activations) is what the reference builder and ORT recommend on
        # cpu/webgpu; cuda and dml kernels ignore it or compute in fp16 anyway.
        return 4 if self.ep in ("cpu", "webgpu") else 0

    @property
    def default_intra_op_threads(self) -> int:
        """intra_op_num_threads for genai_config.json; -1 leaves the entry out.

        onnxruntime-genai's fallback is half the logical CPUs (it assumes SMT): on a 2-core
        machine without SMT that is one thread, and int4 Qwen3-0.6B to 4B decoded 1.8x slower than
        with ONNX Runtime's own default of one thread per physical core (docs/packing.md#threads).
        GPU EPs run next to nothing on the CPU, so they keep genai's default.
        """
        return 0 if self.ep == "cpu" else -1

    @property
    def provider_options(self) -> dict:
        """Session provider options written to genai_config.json."""
        return {
            "cpu": {},
            "cuda": {"enable_cuda_graph": "0"},
            "dml": {"enable_graph_capture": "0"},
            # Capture as the reference's enable_webgpu_graph writes it: validation off, since
            # a captured step is replayed unchanged (docs/packing.md#graph-capture).
            "webgpu": (
                {"enableGraphCapture": "1", "validationMode": "disabled"}
                if self.graph_capture
                else {"enableGraphCapture": "0", "validationMode": "basic"}
            ),
        }[self.ep]
