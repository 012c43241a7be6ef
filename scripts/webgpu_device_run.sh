#!/bin/bash
# The WebGPU measurements of docs/packing.md#webgpu-plugin-ep, as one command on the GPU machine.
#
#   bash scripts/webgpu_device_run.sh main   # Qwen3-0.6B shape: layouts, capture, reference, parity, profile, max_length, 1.27
#   bash scripts/webgpu_device_run.sh 4b     # Qwen3-4B shape: ours vs the reference's default and capture builds,
#                                            # GPU busy share, block-128 / accuracy-level-0 variants
#   bash scripts/webgpu_device_run.sh parity # tiny families on the plugin EP, capture on (scripts/check_webgpu.py),
#                                            # and a lone GQA against the CPU EP (scripts/webgpu_prefill_attention.py)
#   bash scripts/webgpu_device_run.sh gemma  # Gemma 3 1B shape: fp32 activations vs fp16 blocks (fp32 / fp16 stream) vs the reference
#   bash scripts/webgpu_device_run.sh qwen35    # Qwen3.5-0.8B shape: plugin-EP parity of the tiny hybrids and the
#                                               # sliding-window families, ours vs the reference on webgpu and cpu
#   bash scripts/webgpu_device_run.sh qwen35-4b # Qwen3.5-4B shape on cpu: build time/RSS/nodes, decode, prefill
#   bash scripts/webgpu_device_run.sh padding   # Qwen3.5-0.8B and 4B shapes: decode with --padded-batches on against
#                                               # the default, plugin-EP parity of the tiny Qwen3.5 builds
#   bash scripts/webgpu_device_run.sh submits    # Qwen3-0.6B shape: maxNumPendingDispatches 64/256/4096 against
#   bash scripts/webgpu_device_run.sh submits-4b # the default 16, ours and the reference's capture build (4B shape)
#   bash scripts/webgpu_device_run.sh logits     # --logits last vs all (webgpu + cpu) beside the reference's
#   bash scripts/webgpu_device_run.sh logits-4b  # capture, default and prune_lm_head builds (4B: webgpu only)
#   bash scripts/webgpu_device_run.sh formats    # weight formats that pick other MatMulNBits kernels (fp32
#                                                # activations, block 16/64, zero points) at 0.6B and 4B, and
#                                                # plugin-EP parity of the windowed and text-only Qwen3.5 families
#   bash scripts/webgpu_device_run.sh replay     # a captured decode step replayed without genai (scripts/replay_loop.py),
#                                                # ours and the reference's capture build, beside genai's time per token,
#                                                # at 0.6B and 4B
#   bash scripts/webgpu_device_run.sh hostprof   # where genai's decode step goes on the host (scripts/host_profile.py,
#                                                # native stack samples), ours and the reference's capture build
#                                                # (HOSTPROF_CKPTS: qwen3-0.6b by default; PYSPY_WHL: py-spy's wheel)
#   bash scripts/webgpu_device_run.sh iotypes    # int32 input_ids / attention_mask and fp32 logits (scripts/with_io_types.py),
#                                                # which spare genai its per-step casts, against the int64 build they are
#                                                # made from and the reference's capture build (IOTYPES_CKPTS: qwen3-0.6b)
#   bash scripts/webgpu_device_run.sh goal       # the issue's goal table: ours as built against the reference's capture
#                                                # and default builds, at 0.6B and 4B, with plugin-EP parity meanwhile
#                                                # (GOAL_CKPTS: the shapes; GOAL_ROUNDS: 4)
#   bash scripts/webgpu_device_run.sh qwen35-goal # the goal table for Qwen3.5 (0.8B and 4B shapes): ours as built
#                                                # against the reference's capture and default builds (QWEN35_CKPTS)
#   bash scripts/webgpu_device_run.sh generate   # scripts/generate.py on a Qwen3-0.6B-shaped build: greedy, --sample
#                                                # with one seed twice, --chat, --chat --sample
#   bash scripts/webgpu_device_run.sh int32      # the default build (int64 inputs) against --int32-inputs on, an int32
#                                                # mask alone (scripts/with_io_types.py) and the reference's capture and
#                                                # default builds, at 0.6B and 4B, with plugin-EP parity of the tiny
#                                                # families meanwhile (INT32_CKPTS: the shapes)
#
# Needs (carried, see docs/packing.md): WHEELS=a tar.xz of the unpacked wheels onnxruntime 1.31.1,
# onnxruntime-ep-webgpu 0.4.0, onnxruntime-genai 0.18.0 and onnxruntime-webgpu 1.27.0 (one folder
# each), GL=a folder with the .debs of libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2
# (libvulkan1 alone finds no adapter: the NVIDIA ICD needs glvnd). Results go to $OUT (at most 8 files).
# DRY=1 skips the installs and uses the python/PYTHONPATH of the caller. A local dry run on a tiny
# checkpoint: DRY=1 CKPT=tiny-qwen3 — under DRY, a CKPT the caller sets replaces the checkpoint of every
# part (the *_CKPTS lists' defaults, gemma's gemma3-1b and 4b's two shapes included; an explicit *_CKPTS
# still wins). The parity part builds tiny families only and takes no checkpoint.
set -u
PART=${1:-main}
# Checked before anything is installed: an unknown part used to fall through every branch, install
# the wheels and exit 0 having measured nothing, which on the GPU machine costs a device call.
PARTS="main 4b parity gemma qwen35 qwen35-4b padding submits submits-4b logits logits-4b formats replay hostprof
iotypes goal qwen35-goal generate int32"
known=0
for p in $PARTS; do [ "$p" = "$PART" ] && known=1; done
if [ $known = 0 ]; then
    echo "error: no part '$PART'; choose one of: $(echo $PARTS) (this script's header says what each measures)" >&2
    exit 2
fi
GIVEN_CKPT=${CKPT:-}
OUT=${OUT:-/tmp/webgpu-out}
W=${W:-/tmp/wg-run}
PY=${PY:-python3}
case $PART in  # the checkpoint each part measures (CKPT overrides it)
    qwen35) CKPT=${CKPT:-qwen3.5-0.8b} ;;
    qwen35-4b) CKPT=${CKPT:-qwen3.5-4b} ;;
    submits-4b|logits-4b) CKPT=${CKPT:-qwen3-4b} ;;
    *) CKPT=${CKPT:-qwen3-0.6b} ;;
esac
DRY_CKPTS=""  # under DRY, the caller's CKPT in place of each part's own sizes
[ -n "${DRY:-}" ] && [ -n "$GIVEN_CKPT" ] && DRY_CKPTS=$CKPT
ROUNDS=${ROUNDS:-4}
PROMPT=${PROMPT:-256}
NEW=${NEW:-128}
REPO=$(pwd)
mkdir -p "$OUT" "$W"
rm -f "$W/parity.log"  # a warm machine keeps $W: never report an earlier part's parity as this one's
LOG=$OUT/log.txt
log() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }

if [ -z "${DRY:-}" ]; then
    for f in "$GL"/*.deb; do dpkg -x "$f" /; done; ldconfig
    [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && \
        export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    mkdir -p /tmp/whx /tmp/site /tmp/site127
    tar -xJf "$WHEELS" -C /tmp/whx
    cp -r /tmp/whx/onnxruntime/* /tmp/whx/onnxruntime_ep_webgpu/* /tmp/whx/onnxruntime_genai/* /tmp/site/
    cp -r /tmp/whx/onnxruntime_webgpu/* /tmp/whx/onnxruntime_genai/* /tmp/site127/
    SITE=/tmp/site; SITE127=/tmp/site127
    export PYTHONPATH=$REPO:$REPO/tests:$SITE
    nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader | tee -a "$LOG"
    ls /usr/local/nvidia/share/vulkan/icd.d /usr/share/vulkan/icd.d /etc/vulkan/icd.d 2>&1 | tr '\n' ' ' | tee -a "$LOG"; echo | tee -a "$LOG"
fi
# Preflight: the WebGPU plugin EP finds the GPU (a one-node model on it).
$PY - "$W/add.onnx" <<'PY' 2>&1 | grep -v -i warn | tail -3 | tee -a "$LOG"
import sys
import numpy as np, onnx
from onnx import helper, TensorProto
from builder.ep_runtime import ort_session
g = helper.make_graph([helper.make_node("Add", ["a", "b"], ["c"])], "g",
                      [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in "ab"],
                      [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2])])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]); m.ir_version = 9
onnx.save(m, sys.argv[1])
s = ort_session(sys.argv[1], "WebGpuExecutionProvider")
print("preflight:", s.get_providers(), s.run(None, {"a": np.ones(2, np.float32), "b": np.ones(2, np.float32)})[0])
PY
export PYTHONUNBUFFERED=1
$PY -c "import onnxruntime as o, onnxruntime_genai as g; print('onnxruntime', o.__version__, 'genai', g.__version__)" 2>&1 | tee -a "$LOG"

ours() {  # ours NAME CKPT_DIR [options...]
    local name=$1 ck=$2 start=$SECONDS; shift 2
    if $PY -m builder -m "$ck" -p int4 -e webgpu -o "$W/$name" --overwrite "$@" > "$W/$name.log" 2>&1; then
        log "$name built in $((SECONDS - start)) s ($*)"
    else log "BUILD FAILED $name: $(tail -2 "$W/$name.log")"; fi
}
reference() {  # reference NAME CKPT_DIR [extra_options...]
    local name=$1 ck=$2 start=$SECONDS; shift 2
    if $PY -m onnxruntime_genai.models.builder -i "$ck" -o "$W/$name" -p int4 -e webgpu -c "$W/cache-$name" \
            ${1:+--extra_options "$@"} > "$W/$name.log" 2>&1 && [ -f "$W/$name/model.onnx" ]; then
        log "$name (reference builder) built in $((SECONDS - start)) s ($*)"
    else log "BUILD FAILED $name: $(tail -2 "$W/$name.log")"; fi
}
timed_build() {  # timed_build NAME COMMAND...: wall time and the peak RSS of its largest process
    # (RUSAGE_CHILDREN's ru_maxrss is the largest single descendant's peak, not the tree's sum)
    local name=$1; shift
    $PY - "$name" "$W/$name.log" "$@" <<'PY' 2>&1 | tee -a "$LOG"
import resource, subprocess, sys, time
name, log, command = sys.argv[1], sys.argv[2], sys.argv[3:]

def available_gb():  # the kernel's MemAvailable, so that a build about to exhaust memory is stopped first
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable")) * 1024 / 1e9  # kB

start, note = time.perf_counter(), ""
with open(log, "w") as f:
    child = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT)
    while child.poll() is None:
        if available_gb() < 1.5:
            child.kill()
            note = " (stopped: less than 1.5 GB of memory left on the machine)"
        time.sleep(0.2)
wall = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9  # ru_maxrss is in KiB on Linux
print(f"{name}: exit {child.returncode}, build {wall:.1f} s, peak RSS of its largest process {rss:.2f} GB{note}")
PY
}
checkpoint_for() {  # checkpoint_for SIZE: CK=its random-weight checkpoint, made once per machine
    CK=$W/ck-$1
    [ -f "$CK/config.json" ] || $PY scripts/make_checkpoint.py "$1" "$CK" > /dev/null
    log "checkpoint $1 ready"
}
# The parity runs beside the timings check each case at accuracy level 0 only (--as-built off): the
# second build a quantized case takes at the default level would not fit a call with them; the
# parity part runs both.
parity_meanwhile() {  # plugin-EP parity of the tiny families in the background (NO_PARITY skips it)
    ( [ -n "${NO_PARITY:-}" ] || timeout ${PARITY_TIMEOUT:-300} $PY scripts/check_webgpu.py --as-built off ${ONLY:-} \
        --json "$OUT/parity-plugin.json" > "$W/parity.log" 2>&1 ) &
    PARITY=$!
}
builds_then_parity() {  # wait for the background builds, then for the parity, and log its rows
    wait $(jobs -p | grep -v "^$PARITY$") 2>/dev/null
    wait $PARITY
    [ -f "$W/parity.log" ] && { log "parity (plugin EP):"; grep "^{" "$W/parity.log" | cut -c1-700 | tee -a "$LOG"; }
}
ours_and_reference() {  # ours_and_reference SIZE: its checkpoint, ours as built (auto-SIZE), the reference's capture build
    checkpoint_for "$1"
    ours auto-$1 "$CK" &
    reference ref-graph-$1 "$CK" enable_webgpu_graph=true &
    wait
}
install_pyspy() {  # py-spy for scripts/host_profile.py, from its carried wheel (PYSPY_WHL)
    [ -n "${PYSPY_WHL:-}" ] && $PY -m pip install -q --no-deps --target /tmp/pyspy "$PYSPY_WHL" 2>&1 | tail -1
}
nodes() { $PY -c "import onnx,sys; m=onnx.load(sys.argv[1]+'/model.onnx', load_external_data=False); print(sys.argv[1].split('/')[-1], len(m.graph.node), 'nodes')" "$1" | tee -a "$LOG"; }

if [ "$PART" = main ]; then
    CK=$W/ck-$CKPT
    [ -f "$CK/config.json" ] || $PY scripts/make_checkpoint.py "$CKPT" "$CK" > /dev/null
    log "checkpoint $CKPT ready"
    # Parity on the WebGPU EP (tiny families, capture on as built) while the CPU builds.
    ( [ -n "${NO_PARITY:-}" ] || timeout 400 $PY scripts/check_webgpu.py --as-built off --json "$OUT/parity-plugin.json" > "$W/parity.log" 2>&1 ) &
    PARITY=$!
    ours auto "$CK" &
    ours sep-sigmoid "$CK" --qkv-packing separate --mlp-packing separate --silu sigmoid-mul &
    ours fnorm-sigmoid "$CK" --qkv-packing fused-norm --mlp-packing separate --silu sigmoid-mul &
    ours fnorm-quickgelu "$CK" --qkv-packing fused-norm --mlp-packing separate --silu quickgelu &
    ours nocapture "$CK" --graph-capture off &
    ours t127 "$CK" --target-ort 1.27 &
    reference ref-default "$CK" &
    reference ref-graph "$CK" enable_webgpu_graph=true &
    wait $(jobs -p | grep -v "^$PARITY$") 2>/dev/null
    for d in auto sep-sigmoid fnorm-sigmoid fnorm-quickgelu nocapture t127 ref-default ref-graph; do nodes "$W/$d"; done
    log "builds done"
    # The one paired run: every model once per round, fresh sessions, shuffled order.
    timeout 300 $PY scripts/bench_genai.py ours=$W/auto ref-graph=$W/ref-graph ref-default=$W/ref-default \
        ours-sep-sigmoid=$W/sep-sigmoid ours-fnorm-sigmoid=$W/fnorm-sigmoid ours-fnorm-quickgelu=$W/fnorm-quickgelu \
        ours-nocapture=$W/nocapture --provider webgpu --prompt $PROMPT --new $NEW --rounds $ROUNDS \
        --json "$OUT/bench-main.json" 2>&1 | grep -v -i warn | tee -a "$LOG"
    wait $PARITY  # NO_PARITY=1 leaves no parity.log
    [ -f "$W/parity.log" ] && { log "parity (plugin EP):"; grep -v -i warn "$W/parity.log" | cut -c1-400 | tee -a "$LOG"; }
    # Where a captured decode step's time goes: the same graph with and without capture.
    $PY scripts/with_session_options.py "$W/auto" "$W/auto-nocap" provider.enableGraphCapture=0 > /dev/null
    timeout 90 $PY scripts/profile_genai.py "$W/auto" --prompt $PROMPT --new 64 --json "$OUT/profile-capture.json" 2>&1 | grep -v -i warn | head -40 | tee -a "$LOG"
    timeout 90 $PY scripts/profile_genai.py "$W/auto-nocap" --prompt $PROMPT --new 64 --json "$OUT/profile-nocapture.json" 2>&1 | grep -v -i warn | head -40 | tee -a "$LOG"
    # What max_length costs: the KV buffers are allocated at the config's max_length.
    MODELS=""
    for n in 1024 4096 16384 40960; do
        $PY scripts/with_session_options.py "$W/auto" "$W/ml$n" search.max_length=$n > /dev/null
        MODELS="$MODELS ml$n=$W/ml$n"
    done
    timeout 150 $PY scripts/bench_genai.py $MODELS --provider webgpu --prompt $PROMPT --new 64 --rounds 3 --max-length -1 \
        --json "$OUT/bench-max-length.json" 2>&1 | grep -v -i warn | tee -a "$LOG"
    # onnxruntime-webgpu 1.27: the --target-ort 1.27 build loads and matches there.
    if [ -n "${SITE127:-}" ]; then
        log "onnxruntime-webgpu 1.27:"
        PYTHONPATH=$REPO:$REPO/tests:$SITE127 timeout 60 $PY scripts/generate.py "$W/t127" --max-new-tokens 8 2>&1 | grep -v -i warn | tail -3 | tee -a "$LOG"
        PYTHONPATH=$REPO:$REPO/tests:$SITE127 timeout 60 $PY scripts/generate.py "$W/auto" --max-new-tokens 8 2>&1 | grep -v -i warn | tail -2 | tee -a "$LOG"
        PYTHONPATH=$REPO:$REPO/tests:$SITE127 timeout 120 $PY scripts/check_webgpu.py --as-built off --target-ort 1.27 --only qwen3 --only llama \
            --only qwen2 --json "$OUT/parity-127.json" 2>&1 | grep -v -i warn | cut -c1-400 | tee -a "$LOG"
    fi
elif [ "$PART" = submits ] || [ "$PART" = submits-4b ]; then
    # maxNumPendingDispatches: the plugin EP submits its queue every N dispatches (default 16), also when it
    # replays a captured graph, where there is no encoding left to overlap; each vkQueueSubmit costs host time.
    SIZE=$CKPT
    CK=$W/ck-$CKPT
    [ -f "$CK/config.json" ] || $PY scripts/make_checkpoint.py "$CKPT" "$CK" > /dev/null
    log "checkpoint $CKPT ready"
    ours auto "$CK" &
    reference ref-graph "$CK" enable_webgpu_graph=true &
    reference ref-default "$CK" &
    wait
    MODELS="ours=$W/auto ref-graph=$W/ref-graph ref-default=$W/ref-default"
    for n in ${DISPATCHES:-64 256 4096}; do
        $PY scripts/with_session_options.py "$W/auto" "$W/auto-d$n" provider.maxNumPendingDispatches=$n > /dev/null
        MODELS="$MODELS ours-d$n=$W/auto-d$n"
    done
    $PY scripts/with_session_options.py "$W/ref-graph" "$W/ref-graph-d4096" provider.maxNumPendingDispatches=4096 > /dev/null
    MODELS="$MODELS ref-graph-d4096=$W/ref-graph-d4096"
    timeout 400 $PY scripts/bench_genai.py $MODELS --provider webgpu --prompt $PROMPT --new $NEW --rounds $ROUNDS \
        --json "$OUT/bench-submits-$SIZE.json" 2>&1 | grep -v -i warn | tee -a "$LOG"
    # GPU busy share per token, one process per model (genai keeps the first model's WebGPU context).
    for m in ${BUSY:-}; do
        timeout 60 $PY scripts/gpu_busy.py $m=$W/$m --prompt $PROMPT --new 512 --json "$OUT/gpu-busy-$SIZE-$m.json" 2>&1 \
            | grep -v -i warn | tee -a "$LOG"
    done
elif [ "$PART" = logits ] || [ "$PART" = logits-4b ]; then
    # --logits last against all, beside the reference's capture, default and prune_lm_head builds.
    CK=$W/ck-$CKPT
    [ -f "$CK/config.json" ] || $PY scripts/make_checkpoint.py "$CKPT" "$CK" > /dev/null
    ours all "$CK" --logits all &
    ours last "$CK" --logits last &
    reference ref-graph "$CK" enable_webgpu_graph=true &
    reference ref-default "$CK" &
    reference ref-graph-prune "$CK" enable_webgpu_graph=true prune_lm_head=true &
    if [ "$PART" = logits ]; then
        ( $PY -m builder -m "$CK" -p int4 -e cpu -o "$W/cpu-all" --logits all --overwrite > "$W/cpu-all.log" 2>&1 ) &
        ( $PY -m builder -m "$CK" -p int4 -e cpu -o "$W/cpu-last" --logits last --overwrite > "$W/cpu-last.log" 2>&1 ) &
    fi
    wait
    timeout 330 $PY scripts/bench_genai.py ours=$W/all ours-last=$W/last ref-graph=$W/ref-graph \
        ref-graph-prune=$W/ref-graph-prune ref-default=$W/ref-default --provider webgpu --prompt $PROMPT --new $NEW \
        --rounds $ROUNDS --json "$OUT/bench-last-webgpu-$CKPT.json" 2>&1 | grep -v -i warn | tee -a "$LOG"
    [ "$PART" = logits ] && timeout 150 $PY scripts/bench_genai.py ours=$W/cpu-all ours-last=$W/cpu-last \
        --provider cpu --prompt $PROMPT --new 32 --rounds 3 --json "$OUT/bench-last-cpu-$CKPT.json" 2>&1 \
        | grep -v -i warn | tee -a "$LOG"
elif [ "$PART" = formats ]; then
    # The EP picks its MatMulNBits kernel from the build: fp32 activations take the DP4A path at M = 1,
    # fp16 ones a tiled dot product; block size and zero points change what each thread reads.
    ( [ -n "${NO_PARITY:-}" ] || timeout 300 $PY scripts/check_webgpu.py --as-built off --only mistral --only gemma3 \
        --only qwen3_5-text --json "$OUT/parity-formats.json" > "$W/parity.log" 2>&1 ) &
    PARITY=$!
    for size in ${FORMAT_CKPTS:-${DRY_CKPTS:-qwen3-0.6b qwen3-4b}}; do
        CK=$W/ck-$size
        [ -f "$CK/config.json" ] || $PY scripts/make_checkpoint.py $size "$CK" > /dev/null
        log "checkpoint $size ready"
        ours f-auto-$size "$CK" &
        ours f-io32-$size "$CK" --io-dtype fp32 &
        ours f-b64-$size "$CK" --block-size 64 &
        ours f-b16-$size "$CK" --block-size 16 &
        ours f-asym-$size "$CK" --no-symmetric &
        wait $(jobs -p | grep -v "^$PARITY$") 2>/dev/null
        MODELS=""
        for v in auto io32 b64 b16 asym; do MODELS="$MODELS $v=$W/f-$v-$size"; done
        timeout 200 $PY scripts/bench_genai.py $MODELS --provider webgpu --prompt $PROMPT --new $NEW \
            --rounds ${FORMAT_ROUNDS:-3} --json "$OUT/bench-formats-$size.json" 2>&1 | grep -v -i warn | tee -a "$LOG"
    done
    wait $PARITY
    [ -f "$W/parity.log" ] && { log "parity (plugin EP):"; grep "^{" "$W/parity.log" | cut -c1-700 | tee -a "$LOG"; }
elif [ "$PART" = replay ]; then
    # A decode step's time without genai: the captured step replayed by plain onnxruntime, beside genai's
    # own time per token for the same folders (REPLAY_CKPTS: the shapes, 0.6B and 4B by default;
    # REPLAY_ROUNDS=0 skips genai).
    for size in ${REPLAY_CKPTS:-${DRY_CKPTS:-qwen3-0.6b qwen3-4b}}; do
        ours_and_reference "$size"
        for m in auto ref-graph; do
            timeout 150 $PY scripts/replay_loop.py "$W/$m-$size" --past $((PROMPT + NEW / 2)) \
                --json "$OUT/replay-$m-$size.json" 2>&1 | tee "$W/replay-$m-$size.log" | grep -v -i warn | sed "s/^/$m-$size: /" | tee -a "$LOG"
        done
        [ "${REPLAY_ROUNDS:-2}" = 0 ] || timeout 150 $PY scripts/bench_genai.py ours=$W/auto-$size ref-graph=$W/ref-graph-$size --provider webgpu \
            --prompt $PROMPT --new $NEW --rounds ${REPLAY_ROUNDS:-2} --json "$OUT/bench-replay-$size.json" 2>&1 \
            | grep -v -i warn | tee -a "$LOG"
    done
elif [ "$PART" = hostprof ]; then
    install_pyspy
    for size in ${HOSTPROF_CKPTS:-${DRY_CKPTS:-qwen3-0.6b}}; do
        ours_and_reference "$size"
        timeout 280 $PY scripts/host_profile.py ours=$W/auto-$size ref-graph=$W/ref-graph-$size --prompt $PROMPT \
            --new ${HOSTPROF_NEW:-2000} --rate ${HOSTPROF_RATE:-100} --py-spy ${PYSPY:-/tmp/pyspy/bin/py-spy} \
            --json "$OUT/hostprof-$size.json" 2>&1 | grep -v -i warn | tee -a "$LOG"
    done
elif [ "$PART" = iotypes ]; then
    install_pyspy
    for size in ${IOTYPES_CKPTS:-${DRY_CKPTS:-qwen3-0.6b}}; do
        ours_and_reference "$size"
        # The variants start from the int64 build (--int32-inputs off), as session 9 measured them.
        ours i64-$size "$CK" --int32-inputs off
        $PY scripts/with_io_types.py "$W/i64-$size" "$W/ids-$size" input_ids=int32 | tee -a "$LOG"
        $PY scripts/with_io_types.py "$W/i64-$size" "$W/idsmask-$size" input_ids=int32 attention_mask=int32 | tee -a "$LOG"
        $PY scripts/with_io_types.py "$W/i64-$size" "$W/all-$size" input_ids=int32 attention_mask=int32 logits=fp32 \
            | tee -a "$LOG"
        # The variants' greedy tokens against the folder they were made from (64 new tokens, one process).
        $PY - "$W/i64-$size" "$W/ids-$size" "$W/idsmask-$size" "$W/all-$size" <<'PY' 2>&1 | grep -v -i warn | tee -a "$LOG"
import sys
import onnxruntime_genai as og
from builder.ep_runtime import genai_model
tokens = {}
for folder in sys.argv[1:]:
    model = genai_model(og, folder)
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=96)
    g = og.Generator(model, params)
    g.append_tokens([(7 * i + 3) % 400 + 1 for i in range(32)])
    while not g.is_done():
        g.generate_next_token()
    tokens[folder] = [int(t) for t in g.get_sequence(0)][32:]
    del g, model
base = tokens[sys.argv[1]]
for folder, seq in tokens.items():
    print(f"greedy tokens {folder.split('/')[-1]}: {len(seq)}, equal to the int64 build's: {seq == base}")
PY
        timeout 300 $PY scripts/bench_genai.py ours-int64=$W/i64-$size ids=$W/ids-$size idsmask=$W/idsmask-$size \
            all=$W/all-$size ref-graph=$W/ref-graph-$size --provider webgpu --prompt $PROMPT --new $NEW \
            --rounds ${IOTYPES_ROUNDS:-4} --json "$OUT/bench-iotypes-$size.json" 2>&1 | grep -v -i warn | tee -a "$LOG"
        [ -x "${PYSPY:-/tmp/pyspy/bin/py-spy}" ] && timeout 200 $PY scripts/host_profile.py ours-int64=$W/i64-$size \
            ids=$W/ids-$size all=$W/all-$size --prompt $PROMPT --new ${HOSTPROF_NEW:-1500} \
            --rate ${HOSTPROF_RATE:-100} --py-spy ${PYSPY:-/tmp/pyspy/bin/py-spy} --json "$OUT/hostprof-iotypes-$size.json" \
            2>&1 | grep -v -i warn | tee -a "$LOG"
    done
elif [ "$PART" = int32 ]; then
    parity_meanwhile
    for size in ${INT32_CKPTS:-${DRY_CKPTS:-qwen3-0.6b qwen3-4b}}; do
        checkpoint_for "$size"
        ours auto-$size "$CK" &
        ours i32-$size "$CK" --int32-inputs on &
        reference ref-graph-$size "$CK" enable_webgpu_graph=true &
        reference ref-default-$size "$CK" &
    done
    builds_then_parity
    for size in ${INT32_CKPTS:-${DRY_CKPTS:-qwen3-0.6b qwen3-4b}}; do
        # int64 input_ids with an int32 mask: which of the two inputs the int32 build's difference is
        rm -rf "$W/mask32-$size"; $PY scripts/with_io_types.py "$W/auto-$size" "$W/mask32-$size" attention_mask=int32 | tee -a "$LOG"
        timeout 300 $PY scripts/bench_genai.py ours=$W/auto-$size ours-int32=$W/i32-$size ours-mask32=$W/mask32-$size \
            ref-graph=$W/ref-graph-$size ref-default=$W/ref-default-$size --provider webgpu --prompt $PROMPT --new $NEW \
            --rounds ${INT32_ROUNDS:-4} --json "$OUT/bench-int32-$size.json" 2>&1 | grep -v -i warn | tee -a "$LOG"
    done
elif [ "$PART" = goal ] || [ "$PART" = qwen35-goal ]; then
    # The goal table: ours as built against the reference's capture and default builds, Qwen3's
    # shapes with the tiny families' parity meanwhile, or the hybrids' (qwen35-goal: no parity)
    if [ "$PART" = goal ]; then SIZES=${GOAL_CKPTS:-${DRY_CKPTS:-qwen3-0.6b qwen3-4b}}; DEFAULT_ROUNDS=4
    else SIZES=${QWEN35_CKPTS:-${DRY_CKPTS:-qwen3.5-0.8b qwen3.5-4b}}; DEFAULT_ROUNDS=3; NO_PARITY=1; fi
    parity_meanwhile
    for size in $SIZES; do
        checkpoint_for "$size"
        ours auto-$size "$CK" &
        reference ref-graph-$size "$CK" enable_webgpu_graph=true &
        reference ref-default-$size "$CK" &
    done
    builds_then_parity
    for size in $SIZES; do
        for d in auto-$size ref-graph-$size ref-default-$size; do [ -f "$W/$d/model.onnx" ] && nodes "$W/$d"; done
        timeout 280 $PY scripts/bench_genai.py ours=$W/auto-$size ref-graph=$W/ref-graph-$size \
            ref-default=$W/ref-default-$size --provider webgpu --prompt $PROMPT --new $NEW \
            --rounds ${GOAL_ROUNDS:-$DEFAULT_ROUNDS} --json "$OUT/bench-$PART-$size.json" 2>&1 | grep -v -i warn | tee -a "$LOG"
    done
elif [ "$PART" = gemma ]; then  # Gemma 3 1B shape: fp32 activations vs fp16 blocks (fp32 stream: the default)
    checkpoint_for ${DRY_CKPTS:-gemma3-1b}
    ours g-fp32 "$CK" --io-dtype fp32 &
    ours g-stream32 "$CK" --io-dtype fp16 &
    ours g-fp16 "$CK" --io-dtype fp16 --residual-dtype fp16 &
    reference g-ref "$CK" &
    wait
    for d in g-fp32 g-stream32 g-fp16 g-ref; do nodes "$W/$d"; done
    timeout 420 $PY scripts/bench_genai.py fp32=$W/g-fp32 stream32=$W/g-stream32 fp16=$W/g-fp16 ref=$W/g-ref \
        --provider webgpu --prompt $PROMPT --new $NEW --rounds ${GEMMA_ROUNDS:-3} \
        --json "$OUT/bench-gemma-1b.json" 2>&1 | grep -v -i warn | tee -a "$LOG"
elif [ "$PART" = parity ]; then
    # A lone GroupQueryAttention against the CPU EP up to 256-token chunks: on SwiftShader the EP's
    # prefill attention went wrong from 32 tokens (docs/packing.md#webgpu-without-a-gpu); the
    # parity below uses 12-token prompts unless PARITY_PROMPT_TOKENS asks for more (at most 240 on the
    # tiny models' 256 positions, 112 on the YaRN ones' 128; PARITY_MAX_POSITIONS=8192 makes them with
    # more, for prompts up to 4080; PARITY_NEW_TOKENS=4000 has genai decode that many through the
    # captured step, up to the end of the 4096-slot KV buffers). Each quantized case is checked as built
    # too (at the default accuracy level): about 25 s a case on an H100, so the whole list takes two
    # calls (ONLY="--only ...").
    timeout 120 $PY scripts/webgpu_prefill_attention.py --json "$OUT/prefill-attention.json" 2>&1 | grep "^heads" | tee -a "$LOG"
    timeout ${PARITY_TIMEOUT:-460} $PY scripts/check_webgpu.py ${ONLY:-} --prompt-tokens ${PARITY_PROMPT_TOKENS:-12} \
        ${PARITY_MAX_POSITIONS:+--max-positions $PARITY_MAX_POSITIONS} ${PARITY_NEW_TOKENS:+--new-tokens $PARITY_NEW_TOKENS} \
        --json "$OUT/parity-plugin.json" 2>&1 | grep "^{" | cut -c1-700 | tee -a "$LOG"
elif [ "$PART" = generate ]; then  # scripts/generate.py on the plugin EP with capture: greedy, --sample
    # twice with one seed (the same tokens), --chat, --chat --sample; CKPT's shape (qwen3-0.6b)
    checkpoint_for ${DRY_CKPTS:-$CKPT}
    ours gen-auto "$CK"
    for flags in "" "--sample --seed 5" "--sample --seed 5" "--chat" "--chat --sample --seed 5"; do
        log "generate.py --max-new-tokens 32 $flags"
        timeout 120 $PY scripts/generate.py "$W/gen-auto" --max-new-tokens 32 $flags 2>&1 | grep -v -i warn \
            | tail -6 | cut -c1-400 | tee -a "$LOG"
    done
elif [ "$PART" = 4b ]; then
    ( [ -n "${NO_PARITY:-}" ] || timeout 300 $PY scripts/check_webgpu.py --as-built off --json "$OUT/parity-plugin.json" > "$W/parity.log" 2>&1 ) &
    S06=${DRY_CKPTS:-qwen3-0.6b}; S4B=${DRY_CKPTS:-qwen3-4b}
    C06=$W/ck-$S06; CK=$W/ck-$S4B
    [ -f "$C06/config.json" ] || $PY scripts/make_checkpoint.py "$S06" "$C06" > /dev/null
    ours auto "$C06" &
    ours t127 "$C06" --target-ort 1.27 &
    ours b128 "$C06" --block-size 128 &
    ours acc0 "$C06" --accuracy-level 0 &
    reference ref-graph "$C06" enable_webgpu_graph=true &
    [ -f "$CK/config.json" ] || $PY scripts/make_checkpoint.py "$S4B" "$CK" > /dev/null
    log "checkpoint $S4B ready"
    ours auto4b "$CK" &
    reference ref-default4b "$CK" &
    reference ref-graph4b "$CK" enable_webgpu_graph=true &
    wait
    [ -f "$W/parity.log" ] && { log "parity (plugin EP):"; grep "^{" "$W/parity.log" | cut -c1-600 | tee -a "$LOG"; }
    for d in auto4b ref-default4b ref-graph4b; do nodes "$W/$d"; done
    timeout 240 $PY scripts/bench_genai.py ours=$W/auto4b ref-graph=$W/ref-graph4b ref-default=$W/ref-default4b \
        --provider webgpu --prompt $PROMPT --new $NEW --rounds $ROUNDS --json "$OUT/bench-4b.json" 2>&1 | grep -v -i warn | tee -a "$LOG"
    # GPU busy time per token with capture on (NVML), 0.6B and 4B, ours and the reference's capture build.
    timeout 120 $PY scripts/gpu_busy.py ours-0.6b=$W/auto ref-graph-0.6b=$W/ref-graph ours-4b=$W/auto4b \
        ref-graph-4b=$W/ref-graph4b --prompt $PROMPT --new 512 --json "$OUT/gpu-busy.json" 2>&1 | grep -v -i warn | tee -a "$LOG"
    # onnxruntime-webgpu 1.27 writes GPU kernel times into the profile (the plugin EP does not).
    [ -n "${SITE127:-}" ] && PYTHONPATH=$REPO:$REPO/tests:$SITE127 timeout 90 $PY scripts/profile_genai.py "$W/t127" \
        --prompt $PROMPT --new 64 --json "$OUT/profile-127.json" 2>&1 | grep -v -i warn | head -40 | tee -a "$LOG"
    # Kernel-side options at 0.6B: int4 block 128 (fewer scales to read), accuracy_level 0 (fp16 activations).
    timeout 150 $PY scripts/bench_genai.py ours=$W/auto ref-graph=$W/ref-graph ours-block128=$W/b128 ours-acc0=$W/acc0 \
        --provider webgpu --prompt $PROMPT --new $NEW --rounds 3 --json "$OUT/bench-kernels.json" 2>&1 | grep -v -i warn | tee -a "$LOG"
elif [ "$PART" = qwen35 ]; then
    ONLY="--only qwen3_5 --only qwen3_5-text --only mistral --only gemma3"
    ( [ -n "${NO_PARITY:-}" ] || timeout 420 $PY scripts/check_webgpu.py --as-built off $ONLY --json "$OUT/parity-qwen35.json" \
        > "$W/parity.log" 2>&1 ) &
    PARITY=$!
    CK=$W/ck-$CKPT
    [ -f "$CK/config.json" ] || $PY scripts/make_checkpoint.py "$CKPT" "$CK" > /dev/null
    log "checkpoint $CKPT ready"
    ours q35 "$CK" &
    ours q35-nocapture "$CK" --graph-capture off &
    reference q35-ref-default "$CK" &
    reference q35-ref-graph "$CK" enable_webgpu_graph=true &
    ( $PY -m builder -m "$CK" -p int4 -e cpu -o "$W/q35-cpu" --overwrite > "$W/q35-cpu.log" 2>&1 ) &
    ( $PY -m onnxruntime_genai.models.builder -i "$CK" -o "$W/q35-ref-cpu" -p int4 -e cpu -c "$W/cache-q35-ref-cpu" \
        > "$W/q35-ref-cpu.log" 2>&1 ) &
    wait $(jobs -p | grep -v "^$PARITY$") 2>/dev/null
    for d in q35 q35-nocapture q35-ref-default q35-ref-graph q35-cpu q35-ref-cpu; do
        [ -f "$W/$d/model.onnx" ] && nodes "$W/$d" || log "no model in $d: $(tail -2 "$W/$d.log")"
    done
    timeout 200 $PY scripts/bench_genai.py ours=$W/q35 ref-graph=$W/q35-ref-graph ref-default=$W/q35-ref-default \
        ours-nocapture=$W/q35-nocapture --provider webgpu --prompt $PROMPT --new $NEW --rounds $ROUNDS \
        --json "$OUT/bench-qwen35-webgpu.json" 2>&1 | grep -v -i warn | tee -a "$LOG"
    # cpu, as built (ours: one thread per core; the reference: genai's default) and at equal settings.
    $PY scripts/with_session_options.py "$W/q35-ref-cpu" "$W/q35-ref-cpu-t0" intra_op_num_threads=0 > /dev/null
    $PY scripts/with_session_options.py "$W/q35-cpu" "$W/q35-cpu-t1" intra_op_num_threads=1 > /dev/null
    $PY scripts/with_session_options.py "$W/q35-ref-cpu" "$W/q35-ref-cpu-t1" intra_op_num_threads=1 > /dev/null
    timeout 150 $PY scripts/bench_genai.py ours=$W/q35-cpu ref=$W/q35-ref-cpu ref-t0=$W/q35-ref-cpu-t0 \
        ours-t1=$W/q35-cpu-t1 ref-t1=$W/q35-ref-cpu-t1 --provider cpu --prompt 128 --new 64 --rounds 3 \
        --json "$OUT/bench-qwen35-cpu.json" 2>&1 | grep -v -i warn | tee -a "$LOG"
    wait $PARITY
    [ -f "$W/parity.log" ] && { log "parity (plugin EP):"; grep "^{" "$W/parity.log" | cut -c1-700 | tee -a "$LOG"; }
elif [ "$PART" = padding ]; then
    # Qwen3.5 shapes: what --padded-batches on (genai's right pads kept out of the recurrent state,
    # kit/blocks/right_padding.py) costs a captured decode step against the default (off with
    # capture), with the plugin-EP parity of the tiny Qwen3.5 builds (padded batches included) meanwhile.
    ONLY=${ONLY:-"--only qwen3_5"}
    parity_meanwhile
    for size in ${PADDING_CKPTS:-${DRY_CKPTS:-qwen3.5-0.8b qwen3.5-4b}}; do
        checkpoint_for "$size"
        ours pad-off-$size "$CK" &
        ours pad-on-$size "$CK" --padded-batches on &
    done
    builds_then_parity
    for size in ${PADDING_CKPTS:-${DRY_CKPTS:-qwen3.5-0.8b qwen3.5-4b}}; do
        for d in pad-off-$size pad-on-$size; do nodes "$W/$d"; done
        timeout 240 $PY scripts/bench_genai.py default=$W/pad-off-$size padded=$W/pad-on-$size --provider webgpu \
            --prompt $PROMPT --new $NEW --rounds ${PADDING_ROUNDS:-4} --json "$OUT/bench-padding-$size.json" 2>&1 \
            | grep -v -i warn | tee -a "$LOG"
    done
elif [ "$PART" = qwen35-4b ]; then
    CK=$W/ck-$CKPT
    [ -f "$CK/config.json" ] || $PY scripts/make_checkpoint.py "$CKPT" "$CK" > /dev/null
    cat "$CK"/*.safetensors > /dev/null
    log "checkpoint $CKPT ready ($(du -sh "$CK" | cut -f1))"
    # One build at a time, so that the times and the RSS are each builder's own.
    timed_build ours-4b $PY -m builder -m "$CK" -p int4 -e cpu -o "$W/q35-4b" --overwrite
    timed_build ref-4b $PY -m onnxruntime_genai.models.builder -i "$CK" -o "$W/q35-4b-ref" -p int4 -e cpu \
        -c "$W/cache-q35-4b-ref"
    for d in q35-4b q35-4b-ref; do [ -f "$W/$d/model.onnx" ] && nodes "$W/$d"; done
    $PY scripts/with_session_options.py "$W/q35-4b-ref" "$W/q35-4b-ref-t0" intra_op_num_threads=0 > /dev/null
    timeout 240 $PY scripts/bench_genai.py ours=$W/q35-4b ref=$W/q35-4b-ref ref-t0=$W/q35-4b-ref-t0 \
        --provider cpu --prompt 128 --new 32 --rounds 3 --json "$OUT/bench-qwen35-4b-cpu.json" 2>&1 \
        | grep -v -i warn | tee -a "$LOG"
    [ -n "${NO_WEBGPU:-}" ] && { log "done"; exit 0; }
    ours q35-4b-webgpu "$CK" &
    reference q35-4b-ref-graph "$CK" enable_webgpu_graph=true &
    wait
    timeout 150 $PY scripts/bench_genai.py ours=$W/q35-4b-webgpu ref-graph=$W/q35-4b-ref-graph --provider webgpu \
        --prompt $PROMPT --new $NEW --rounds 3 --json "$OUT/bench-qwen35-4b-webgpu.json" 2>&1 | grep -v -i warn \
        | tee -a "$LOG"
fi
log "done"
