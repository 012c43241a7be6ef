"""One Gated DeltaNet layer in four ONNX forms, checked against transformers and timed on CPU.

    python scripts/bench_linear_attention.py check            # each form vs Qwen3_5GatedDeltaNet
    python scripts/bench_linear_attention.py time [--hidden 16 --value-heads 16 --rounds 7]
    python scripts/bench_linear_attention.py ba [--rounds 9]  # in_proj_ba as float MatMul vs int4

Forms (the projections are the same packed float MatMuls in all of them):
  ours:  Transpose -> CausalConvWithState -> Transpose -> Split(qk|v) -> BranchwiseRMSNorm (the l2 norm)
         -> Split -> LinearAttentionGate -> LinearAttention -> BranchwiseRMSNorm * silu(z)
         (builder/kit/blocks/linear_attention.py)
  fused: the fewest nodes: CausalConvWithState(channels_last) (no Transposes) and GatedRMSNorm
  gdn:   CausalConvWithState(channels_last) -> com.microsoft GatedDeltaNet (packed qkv, l2 norm, gates
         inside) -> Reshape -> GatedRMSNorm
  ref:  the reference builder's chain: Transposes around a channels-first conv, Reshape/LpNormalization/
        Reshape for q and k, a Mul for the query scale
`check` runs a 2-row batch through a 7-token prefill, three 1-token steps and a 3-token chunk, with
Hk=2 < Hv=6 and dk != dv, feeding the states back; a form whose output or states differ from
transformers' by more than --tolerance (max abs) fails it (exit 1). `time` uses head dims 128 and a tiny hidden size so
the projections do not drown the rest; states stay in OrtValues swapped between steps (as genai does).
`ba` times 18 in_proj_ba projections (2*Hv rows) as float MatMul and as int4 MatMulNBits.
Timings on a shared machine are noisy: rounds are interleaved and medians reported.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

FORMS = ("ours", "fused", "gdn", "ref")


def layer_module(hidden, hk, hv, dk, dv, seed=0):
    import torch
    from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5TextConfig
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet

    torch.manual_seed(seed)
    cfg = Qwen3_5TextConfig(
        hidden_size=hidden,
        num_hidden_layers=1,
        layer_types=["linear_attention"],
        linear_num_key_heads=hk,
        linear_num_value_heads=hv,
        linear_key_head_dim=dk,
        linear_value_head_dim=dv,
        vocab_size=100,
    )
    mod = Qwen3_5GatedDeltaNet(cfg, 0).eval()
    with torch.no_grad():
        for p in mod.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        mod.A_log.copy_(torch.empty(hv).uniform_(0.01, 16).log())
    return cfg, mod


def build(mod, cfg, form):
    H, Hk, Hv = cfg.hidden_size, cfg.linear_num_key_heads, cfg.linear_num_value_heads
    dk, dv, K = cfg.linear_key_head_dim, cfg.linear_value_head_dim, cfg.linear_conv_kernel_dim
    kd, vd = Hk * dk, Hv * dv
    C = 2 * kd + vd
    inits, nodes = [], []

    def w(t):
        return t.detach().float().numpy()

    def init(name, arr):
        inits.append(nh.from_array(np.ascontiguousarray(arr), name))
        return name

    def ints(name, vals):
        return init(name, np.array(vals, dtype=np.int64))

    def node(op, ins, outs, domain="", **kw):
        nodes.append(h.make_node(op, ins, outs, domain=domain, **kw))

    ms = "com.microsoft"
    node(
        "MatMul",
        ["x", init("qkvz.w", np.concatenate([w(mod.in_proj_qkv.weight), w(mod.in_proj_z.weight)]).T)],
        ["qkvz"],
    )
    node("Split", ["qkvz", ints("s1", [C, vd])], ["qkv", "z"], axis=-1)
    node("MatMul", ["x", init("ba.w", np.concatenate([w(mod.in_proj_b.weight), w(mod.in_proj_a.weight)]).T)], ["ba"])
    node("Split", ["ba", ints("s2", [Hv, Hv])], ["b", "a"], axis=-1)
    conv_w = init("conv.w", w(mod.conv1d.weight))
    if form in ("ref", "ours"):
        node("Transpose", ["qkv"], ["qkv_t"], perm=[0, 2, 1])
        node(
            "CausalConvWithState", ["qkv_t", conv_w, "", "past_conv"], ["conv_t", "present_conv"], ms, activation="silu"
        )
        node("Transpose", ["conv_t"], ["conv"], perm=[0, 2, 1])
    else:
        node(
            "CausalConvWithState",
            ["qkv", conv_w, "", "past_conv"],
            ["conv", "present_conv"],
            ms,
            activation="silu",
            channels_last=1,
        )
    if form == "gdn":
        node(
            "GatedDeltaNet",
            ["conv", "", "", "", "a", "b", "past_rec", init("a_log", w(mod.A_log)), init("dt_bias", w(mod.dt_bias))],
            ["o4", "present_rec"],
            ms,
            gate_activation="softplus",
            beta_activation="sigmoid",
            qk_l2_norm=1,
        )
        node("Reshape", ["o4", ints("rs", [0, 0, vd])], ["o"])
    else:
        neg_exp_a = (-np.exp(w(mod.A_log).astype(np.float64))).astype(np.float32)
        node(
            "LinearAttentionGate",
            ["a", init("dt_bias", w(mod.dt_bias)), init("neg_exp_A", neg_exp_a), "b"],
            ["decay", "beta"],
            ms,
        )
        if form in ("ours", "fused"):
            node("Split", ["conv", ints("s3", [2 * kd, vd])], ["qk", "v"], axis=-1)
            node(
                "BranchwiseRMSNorm",
                ["qk", init("l2s", np.full(dk, dk**-0.5, np.float32))],
                ["qkn"],
                ms,
                num_branches=2 * Hk,
                epsilon=1e-6 / dk,
            )
            node("Split", ["qkn", ints("s4", [kd, kd])], ["q", "k"], axis=-1)
            scale = dk**-0.5
        else:
            node("Split", ["conv", ints("s3", [kd, kd, vd])], ["q0", "k0", "v"], axis=-1)
            for t in ("q", "k"):
                node("Reshape", [t + "0", ints(t + "r1", [0, 0, Hk, dk])], [t + "4"])
                node("LpNormalization", [t + "4"], [t + "n4"], axis=-1, p=2)
                node("Reshape", [t + "n4", ints(t + "r2", [0, 0, kd])], ["qn" if t == "q" else "k"])
            node("Mul", ["qn", init("qscale", np.array(dk**-0.5, np.float32))], ["q"])
            scale = 1.0
        node(
            "LinearAttention",
            ["q", "k", "v", "past_rec", "decay", "beta"],
            ["o", "present_rec"],
            ms,
            q_num_heads=Hk,
            kv_num_heads=Hv,
            update_rule="gated_delta",
            scale=scale,
        )
    if form == "ours":
        node(
            "BranchwiseRMSNorm",
            ["o", init("norm.w", w(mod.norm.weight))],
            ["onn"],
            ms,
            num_branches=Hv,
            epsilon=cfg.rms_norm_eps,
        )
        node("Sigmoid", ["z"], ["zs"])
        node("Mul", ["z", "zs"], ["zg"])
        node("Mul", ["onn", "zg"], ["on"])
    else:
        node(
            "GatedRMSNorm",
            ["o", init("norm.w", w(mod.norm.weight)), "z"],
            ["on"],
            ms,
            epsilon=cfg.rms_norm_eps,
            activation="silu",
        )
    node("MatMul", ["on", init("out.w", w(mod.out_proj.weight).T)], ["y"])
    conv_shape = ["B", C, K - 1] if form in ("ref", "ours") else ["B", K - 1, C]
    rec_shape = ["B", Hv, dv, dk] if form == "gdn" else ["B", Hv, dk, dv]
    vi = h.make_tensor_value_info
    graph = h.make_graph(
        nodes,
        form,
        [vi("x", T.FLOAT, ["B", "S", H]), vi("past_conv", T.FLOAT, conv_shape), vi("past_rec", T.FLOAT, rec_shape)],
        [
            vi("y", T.FLOAT, ["B", "S", H]),
            vi("present_conv", T.FLOAT, conv_shape),
            vi("present_rec", T.FLOAT, rec_shape),
        ],
        inits,
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 21), h.make_opsetid(ms, 1)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model, conv_shape, rec_shape


def check(tolerance: float) -> list[str]:
    """Each form against transformers' layer; the forms that differ by more than tolerance, with how much."""
    import torch
    from transformers.cache_utils import DynamicCache

    cfg, mod = layer_module(64, 2, 6, 16, 8)
    batch, steps = 2, [7, 1, 1, 1, 3]
    xs = [torch.randn(batch, s, cfg.hidden_size) for s in steps]
    cache = DynamicCache(config=cfg)
    with torch.no_grad():
        expected = [mod(x, cache=cache).numpy() for x in xs]
    ref_conv = cache.layers[0].conv_states[0].numpy()[..., 1:]  # transformers keeps K columns, ONNX K-1
    ref_rec = cache.layers[0].recurrent_states[0].numpy()
    failed = []
    for form in FORMS:
        model, conv_shape, rec_shape = build(mod, cfg, form)
        s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        pc = np.zeros([batch] + conv_shape[1:], np.float32)
        pr = np.zeros([batch] + rec_shape[1:], np.float32)
        errors = []
        for x, e in zip(xs, expected):
            y, pc, pr = s.run(None, {"x": x.numpy(), "past_conv": pc, "past_rec": pr})
            errors.append(float(np.abs(y - e).max()))
        conv = pc if form in ("ref", "ours") else pc.transpose(0, 2, 1)
        rec = pr.transpose(0, 1, 3, 2) if form == "gdn" else pr
        conv_error, rec_error = float(np.abs(conv - ref_conv).max()), float(np.abs(rec - ref_rec).max())
        print(
            f"{form}: {len(model.graph.node)} nodes, max |dy| per step {[f'{e:.1e}' for e in errors]}, "
            f"conv state {conv_error:.1e}, recurrent state {rec_error:.1e}"
        )
        worst = max(*errors, conv_error, rec_error)
        if not worst <= tolerance:  # a NaN fails too
            failed.append(f"{form} (max abs difference {worst:.1e})")
    return failed


def time_forms(hidden: int, hk: int, hv: int, rounds: int, decode_steps: int) -> None:
    cfg, mod = layer_module(hidden, hk, hv, 128, 128)
    runs = {}
    for form in FORMS:
        model, cs, rs = build(mod, cfg, form)
        runs[form] = (ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]), cs, rs)
    samples = {(f, s): [] for f in runs for s in (1, 128)}
    for r in range(rounds):
        for form in list(runs) if r % 2 == 0 else list(reversed(runs)):
            s, cs, rs = runs[form]
            for seq in (1, 128):
                states = [
                    [ort.OrtValue.ortvalue_from_numpy(np.zeros([1] + shp[1:], np.float32)) for shp in (cs, rs)]
                    for _ in range(2)
                ]
                x = ort.OrtValue.ortvalue_from_numpy(np.random.randn(1, seq, hidden).astype(np.float32))
                y = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, seq, hidden), np.float32))
                n = decode_steps if seq == 1 else max(3, decode_steps // 50)
                start = time.perf_counter()
                for i in range(n):
                    b = s.io_binding()
                    past, present = states[i % 2], states[(i + 1) % 2]
                    b.bind_ortvalue_input("x", x)
                    b.bind_ortvalue_input("past_conv", past[0])
                    b.bind_ortvalue_input("past_rec", past[1])
                    b.bind_ortvalue_output("y", y)
                    b.bind_ortvalue_output("present_conv", present[0])
                    b.bind_ortvalue_output("present_rec", present[1])
                    s.run_with_iobinding(b)
                samples[(form, seq)].append((time.perf_counter() - start) / n)
    print(f"hidden {hidden}, Hk {hk}, Hv {hv}, dk = dv = 128, {rounds} interleaved rounds, medians:")
    for form in runs:
        dec, pre = np.median(samples[(form, 1)]), np.median(samples[(form, 128)])
        print(f"  {form}: decode {dec * 1e6:.0f} us/step, prefill-128 {pre * 1e3:.2f} ms")


def time_ba(rounds: int) -> None:
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    def model(k, n, quantized, layers=18):
        nodes, inits, outs = [], [], []
        rng = np.random.default_rng(0)
        for i in range(layers):
            weight = (rng.standard_normal((k, n)) * 0.02).astype(np.float32)
            if quantized:
                blocks = k // 32
                packed = np.zeros((n, blocks, 16), np.uint8)
                scales = np.zeros(n * blocks, np.float32)
                zp = np.zeros(n * ((blocks + 1) // 2), np.uint8)
                quantize_matmul_4bits(packed, np.ascontiguousarray(weight), scales, zp, 32, n, k, True)
                inits += [nh.from_array(packed, f"w{i}"), nh.from_array(scales.reshape(n, blocks), f"s{i}")]
                nodes.append(
                    h.make_node(
                        "MatMulNBits",
                        ["x", f"w{i}", f"s{i}"],
                        [f"y{i}"],
                        domain="com.microsoft",
                        K=k,
                        N=n,
                        bits=4,
                        block_size=32,
                        accuracy_level=4,
                    )
                )
            else:
                inits.append(nh.from_array(weight, f"w{i}"))
                nodes.append(h.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"]))
            outs.append(f"y{i}")
        graph = h.make_graph(
            nodes,
            "ba",
            [h.make_tensor_value_info("x", T.FLOAT, [1, "S", k])],
            [h.make_tensor_value_info(o, T.FLOAT, None) for o in outs],
            inits,
        )
        m = h.make_model(graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)])
        m.ir_version = 8
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])

    for k, n, label in ((1024, 32, "Qwen3.5-0.8B"), (2560, 64, "Qwen3.5-4B")):
        sessions = {"float": model(k, n, False), "int4": model(k, n, True)}
        samples = {(q, s): [] for q in sessions for s in (1, 128)}
        for r in range(rounds):
            for q in list(sessions) if r % 2 else list(reversed(list(sessions))):
                for seq in (1, 128):
                    x = np.random.randn(1, seq, k).astype(np.float32)
                    reps = 200 if seq == 1 else 20
                    start = time.perf_counter()
                    for _ in range(reps):
                        sessions[q].run(None, {"x": x})
                    samples[(q, seq)].append((time.perf_counter() - start) / reps / 18)
        for (q, seq), values in samples.items():
            print(
                f"{label} in_proj_ba [{k} -> {n}] {q}, {seq} token(s): {np.median(values) * 1e6:.1f} us per projection"
            )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["check", "time", "ba"])
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--key-heads", type=int, default=16)
    ap.add_argument("--value-heads", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--decode-steps", type=int, default=500)
    ap.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="check: the largest max-abs difference from transformers a form may have (default: %(default)s; "
        "float32, so about 1e-6 is usual).",
    )
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if args.decode_steps < 1:  # time's per-step figures divide by it
        ap.error("--decode-steps must be at least 1")
    # The layer's shape: a bad one was a traceback from torch or from onnxruntime's session.
    if min(args.hidden, args.key_heads, args.value_heads) < 1:
        ap.error("--hidden, --key-heads and --value-heads must be at least 1")
    if args.value_heads % args.key_heads:  # Gated DeltaNet shares each key head among value heads
        ap.error(f"--value-heads {args.value_heads} must be a multiple of --key-heads {args.key_heads}")
    if args.what == "check":
        # It printed the differences and exited 0 whatever they were: a form that computed something
        # else passed the check.
        if failed := check(args.tolerance):
            print(
                f"error: {', '.join(failed)} differ from transformers by more than --tolerance {args.tolerance}",
                file=sys.stderr,
            )
            return 1
    elif args.what == "time":
        time_forms(args.hidden, args.key_heads, args.value_heads, args.rounds, args.decode_steps)
    else:
        time_ba(args.rounds)
    return 0


if __name__ == "__main__":
    from interrupt import run_main

    run_main(main, "the figures printed above are all it measured")
