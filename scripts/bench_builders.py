#!/usr/bin/env python
r"""This builder side by side with onnxruntime-genai's own builder, on the same checkpoints, in one run.

    pip install -e '.[bench]'       # onnxruntime-genai, onnx-ir (the reference builder needs it), psutil, transformers
    python scripts/bench_builders.py --sizes 0.6b,1.7b,4b --run-sizes 0.6b,1.7b --accuracy-sizes 0.6b,1.7b \
        --json docs/results/builders.json

Stages (each can be skipped; results go to one JSON file and a Markdown table on stdout):

build     int4 builds by both builders: `python -m builder -m CKPT -p int4 -e EP -o OUT` and
          `python -m onnxruntime_genai.models.builder -i CKPT -o OUT -p int4 -e EP -c CACHE`.
          Jobs: int4 cpu for every --sizes, int4 webgpu for --webgpu-sizes (default 4b).
          Each build is its own process, run under `/usr/bin/time -v` when it exists (peak RSS =
          its "Maximum resident set size"); a psutil poller also samples the RSS of the process
          tree every 0.1 s as a cross-check (and is the only measure without /usr/bin/time).
          Wall time is the whole process, interpreter start included. Before each build the
          checkpoint files are read once (page cache warm for both builders; "disk reads" is
          what the build still read from disk), and the builder that goes first alternates
          from job to job. Before each build (and each timing) the script waits, up to
          --quiet-wait s, for the CPUs to be idle, and records the CPU seconds other processes
          used during the build ("others' CPU s"): on 2 cores any other load skews the
          figures, ours most in the recorded runs (its quantizer was torch's then, whose
          OpenMP threads spin when a core is taken). Failures (non-zero exit, killed by a
          signal, no model.onnx) are recorded with the log's last lines, not dropped.
run       prefill (--prompts, default 128 and 512 tokens) and decode tokens/s of both int4 cpu
          models through onnxruntime-genai (provider cpu), interleaved rounds, medians
          (scripts/bench_genai.py), for --run-sizes (default 0.6b).
accuracy  prefill logits over a fixed --accuracy-tokens prompt (seeded random ids) of both int4
          cpu models (onnxruntime, CPUExecutionProvider) against the float32 transformers model
          (AutoModelForCausalLM.from_pretrained(dir, dtype=torch.float32), not dequantized):
          NMSE and max-abs at the last position, and over all positions only where both models
          output every position's logits (ours builds last-token logits by default, so its
          all-position columns read n/a), for --accuracy-sizes. Hybrid models (Qwen3.5) get their
          linear-attention states fed as zeros.

Checkpoints are the deterministic random-weight ones of scripts/make_checkpoint.py
(<--checkpoints>/qwen3-<size>, or a full name such as qwen3.5-0.8b), made when missing or incomplete.

A build that failed (or, with --skip-build, is missing), a model that did not load or run in the
timing, or one that did not run in the accuracy stage is in the results and the table, and the run
then ends with exit 1 and one `error:` line on stderr naming each and why.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # test support: synthetic checkpoints
sys.path.insert(0, str(REPO / "scripts"))

from writable import can_write

BUILDERS = ("ours", "reference")
GNU_TIME = "/usr/bin/time"


# ----------------------------------------------------------------------------- checkpoints


def size_name(size: str) -> str:
    from support import synthetic

    size = size.strip().lower()
    # A full name as --sizes' error lists them (gemma3-1b among them), else a Qwen3 size.
    known = size in synthetic.REAL_CONFIGS or size in synthetic.REAL_SHAPE_CONFIGS
    return size if known or size.startswith(("qwen3-", "qwen3.5-")) else f"qwen3-{size}"


def checkpoint_problem(name: str, path: Path) -> str | None:
    """None when `path` holds a complete checkpoint with `name`'s config, else what is wrong."""
    config_file = path / "config.json"
    if not config_file.is_file():
        return "no config.json"
    try:
        return _checkpoint_problem(name, path, config_file)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # a made folder cut short (a kill)
        return f"unreadable ({type(e).__name__}: {str(e)[:100]})"


def _checkpoint_problem(name: str, path: Path, config_file: Path) -> str | None:
    from support import synthetic

    config = synthetic.text_config(json.loads(config_file.read_text()))
    expected = synthetic.text_config(synthetic.REAL_CONFIGS.get(name) or synthetic.REAL_SHAPE_CONFIGS[name])
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if config.get(key) != expected[key]:
            return f"config.json {key}={config.get(key)}, expected {expected[key]}"
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    for fname in files:
        f = path / fname
        if not f.is_file():
            return f"{fname} missing"
        with open(f, "rb") as fh:  # complete file: header + every tensor's bytes
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if f.stat().st_size != 8 + n + end:
            return f"{fname} is {f.stat().st_size} bytes, header says {8 + n + end}"
    return None


def ensure_checkpoint(name: str, path: Path) -> dict:
    from support import synthetic

    problem = checkpoint_problem(name, path)
    made = None
    if problem:
        if path.is_dir() and any(path.iterdir()) and not (path / synthetic.MADE_MARK).is_file():
            raise SystemExit(
                f"error: {path}: {problem}, and it holds files scripts/make_checkpoint.py did not write; "
                "remove it yourself or pass another --checkpoints folder"
            )
        print(f"[checkpoint] {path}: {problem}; making {name}", flush=True)
        if path.exists():
            shutil.rmtree(path)
        start = time.perf_counter()
        made = subprocess.run([sys.executable, str(REPO / "scripts" / "make_checkpoint.py"), name, str(path)])
        if made.returncode:  # it printed why
            raise SystemExit(f"error: scripts/make_checkpoint.py could not make {path} (exit {made.returncode})")
        made = round(time.perf_counter() - start, 1)
        problem = checkpoint_problem(name, path)
        if problem:
            raise SystemExit(f"{path}: still incomplete after make_checkpoint.py: {problem}")
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    return {"path": str(path), "bytes": size, "made_in_s": made}


def cpu_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all processes), since boot."""
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """pid -> (name, user+system CPU seconds so far) of every process we may read, kernel threads included."""
    import psutil

    snapshot = {}
    for p in psutil.process_iter(["name", "cpu_times"]):
        t = p.info["cpu_times"]
        if t is not None:
            snapshot[p.pid] = (p.info["name"], t.user + t.system)
    return snapshot


def top_other_cpu(before: dict, after: dict, exclude: set[int], n: int = 4) -> list:
    """The processes (not ours) that used the most CPU between two snapshots; those that both
    started and ended in between are not seen (the busy total still counts them)."""
    used = []
    for pid, (name, cpu) in after.items():
        if pid in exclude:
            continue
        delta = cpu - before.get(pid, (name, 0.0))[1]
        if delta >= 0.5:
            used.append((round(delta, 1), f"{name}[{pid}]"))
    return [f"{who}: {cpu} s" for cpu, who in sorted(used, reverse=True)[:n]]


def wait_quiet(max_wait: float, threshold: float = 15.0) -> dict:
    """Wait (up to max_wait s) until the machine is idle: other work on 2 cores skews every figure,
    ours most in docs/benchmarks.md's runs (its quantizer was torch's then, with OpenMP threads)."""
    import psutil

    start = time.perf_counter()
    while True:
        busy = psutil.cpu_percent(interval=3.0)
        waited = time.perf_counter() - start
        if busy < threshold or waited >= max_wait:
            if busy >= threshold:
                print(f"[quiet] machine still {busy:.0f}% busy after {waited:.0f} s; going on", flush=True)
            return {"busy_pct_before": busy, "waited_s": round(waited, 1)}
        if waited < 3.5:
            print(f"[quiet] machine {busy:.0f}% busy (other processes); waiting up to {max_wait:.0f} s", flush=True)


def warm(path: Path) -> float:
    """Read every file once so the build finds it in the page cache."""
    start = time.perf_counter()
    for f in sorted(path.iterdir()):
        if f.is_file():
            with open(f, "rb") as fh:
                while fh.read(16 << 20):
                    pass
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- build


def build_command(builder: str, checkpoint: Path, ep: str, out: Path, cache: Path) -> list[str]:
    if builder == "ours":
        return [
            sys.executable,
            "-m",
            "builder",
            "-m",
            str(checkpoint),
            "-p",
            "int4",
            "-e",
            ep,
            "-o",
            str(out),
            "--quiet",
        ]
    return [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(checkpoint),
        "-o",
        str(out),
        "-p",
        "int4",
        "-e",
        ep,
        "-c",
        str(cache),
    ]


class RssPoller(threading.Thread):
    """Peak summed RSS of a process and its descendants, sampled."""

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak, self.done = pid, interval, 0, threading.Event()
        self.pids = {pid}

    def run(self):
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self.done.is_set():
            total = 0
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.Error:
                break
            self.pids.update(p.pid for p in procs)
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self.done.wait(self.interval)


def parse_gnu_time(text: str) -> dict:
    def grab(label, cast=int):
        m = re.search(rf"^\s*{re.escape(label)}:\s*(.+)$", text, re.M)
        return cast(m.group(1).strip()) if m else None

    signal = re.search(r"Command terminated by signal (\d+)", text)
    return {
        "max_rss_bytes": (grab("Maximum resident set size (kbytes)") or 0) * 1024 or None,
        "user_s": grab("User time (seconds)", float),
        "system_s": grab("System time (seconds)", float),
        "disk_reads_bytes": None if grab("File system inputs") is None else grab("File system inputs") * 512,
        "disk_writes_bytes": None if grab("File system outputs") is None else grab("File system outputs") * 512,
        "exit_status": grab("Exit status"),
        "signal": int(signal.group(1)) if signal else None,
    }


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def graph_facts(out: Path) -> dict:
    """Node counts (builder.inspect) and the MatMulNBits/GatherBlockQuantized attributes actually used."""
    import onnx

    from builder.inspect import summarize

    summary = summarize(out)
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    quant: dict[str, dict[str, list]] = {}
    for node in model.graph.node:
        if node.op_type in ("MatMulNBits", "GatherBlockQuantized"):
            attrs = quant.setdefault(node.op_type, {})
            for a in node.attribute:
                if a.type == onnx.AttributeProto.INT and a.name in ("accuracy_level", "bits", "block_size"):
                    if a.i not in attrs.setdefault(a.name, []):
                        attrs[a.name].append(a.i)
    io_type = {i.name: onnx.TensorProto.DataType.Name(i.type.tensor_type.elem_type) for i in model.graph.input}
    return {
        "nodes": summary["nodes"],
        "by_op_type": summary["by_op_type"],
        "quant_attributes": quant,
        "kv_dtype": io_type.get("past_key_values.0.key"),
        "inputs": list(io_type),
    }


def run_build(builder: str, checkpoint: Path, ep: str, out: Path, log: Path, timeout: int, quiet_wait: float) -> dict:
    cache = out.parent / f"{out.name}-cache"
    for p in (out, cache):
        if p.exists():
            shutil.rmtree(p)
    cmd = build_command(builder, checkpoint, ep, out, cache)
    use_time = os.access(GNU_TIME, os.X_OK)
    full = [GNU_TIME, "-v"] + cmd if use_time else cmd
    import psutil

    warm_s = warm(checkpoint)
    quiet = wait_quiet(quiet_wait)
    available = psutil.virtual_memory().available
    print(f"[build] {builder:9s} {checkpoint.name} int4 {ep}: {' '.join(cmd)}", flush=True)
    busy0, procs0, own0 = cpu_busy_s(), cpu_by_process(), sum(os.times()[:2])
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(full, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
        poller = RssPoller(proc.pid)
        poller.start()
        tree = {os.getpid(), proc.pid}
        timed_out = False
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc, timed_out = proc.wait(), True
        wall = time.perf_counter() - start
        busy, procs1 = cpu_busy_s() - busy0 - (sum(os.times()[:2]) - own0), cpu_by_process()  # not this script
        poller.done.set()
        poller.join()
        others = top_other_cpu(procs0, procs1, tree | poller.pids)
    text = log.read_text(errors="replace")
    measured = parse_gnu_time(text) if use_time else {}
    tail = [line for line in re.split(r"[\r\n]+", text.split("\tCommand being timed:")[0]) if line.strip()][-6:]
    result = {
        "builder": builder,
        "command": cmd,
        "log": str(log),
        "returncode": rc,
        "wall_s": round(wall, 2),
        "peak_rss_bytes": measured.get("max_rss_bytes") or poller.peak,
        "peak_rss_source": "/usr/bin/time -v (max RSS of the build process)"
        if measured.get("max_rss_bytes")
        else "psutil poll (sum over the process tree, 0.1 s)",
        "peak_rss_psutil_bytes": poller.peak,
        "available_before_bytes": available,
        "warm_read_s": round(warm_s, 1),
        **quiet,
        **measured,
    }
    if measured.get("user_s") is not None:  # CPU the rest of the machine used meanwhile
        result["other_cpu_s"] = round(max(0.0, busy - measured["user_s"] - measured["system_s"]), 1)
        result["other_cpu_top"] = others  # kernel threads (kswapd: page reclaim) are the build's doing
    status = "ok"
    if timed_out:
        status = f"timed out after {timeout} s"
    elif measured.get("signal"):
        status = f"killed by signal {measured['signal']}" + (" (out of memory?)" if measured["signal"] == 9 else "")
    elif rc != 0:
        status = f"failed (exit {measured.get('exit_status', rc)})"
    elif not (out / "model.onnx").is_file():
        status = "no model.onnx written"
    result["status"] = status
    if status != "ok":
        result["log_tail"] = tail
    else:
        result["output_bytes"] = folder_bytes(out)
        result["model_files_bytes"] = {
            f.name: f.stat().st_size for f in sorted(out.iterdir()) if f.is_file() and f.name.startswith("model.onnx")
        }
        result["graph"] = graph_facts(out)
        report = out / "build_report.json"
        if report.is_file():  # ours: what the builder says about itself
            r = json.loads(report.read_text())
            result["self_report"] = {
                "timings": r.get("timings"),
                "peak_rss_bytes": r.get("peak_rss_bytes"),
                "target": r.get("target"),
                "layout": r.get("layout"),
            }
    if cache.exists():
        shutil.rmtree(cache)
    print(f"[build] {builder:9s} {status}: {wall:.1f} s, peak RSS {result['peak_rss_bytes'] / 1e9:.2f} GB", flush=True)
    return result


# ----------------------------------------------------------------------------- run + accuracy


def run_stage(
    size: str, dirs: dict[str, str], prompts: list[int], new_tokens: int, rounds: int, quiet_wait: float
) -> list[dict]:
    from bench_genai import bench

    reports = []
    for prompt in prompts:
        quiet = wait_quiet(quiet_wait)
        print(f"[run] {size}: prompt {prompt}, {new_tokens} new tokens, {rounds} rounds", flush=True)
        own0, busy0, procs0 = sum(os.times()[:2]), cpu_busy_s(), cpu_by_process()
        start = time.perf_counter()
        report = bench(dirs, "cpu", prompt, new_tokens, rounds)
        report["size"], report["elapsed_s"] = size, round(time.perf_counter() - start, 1)
        report["other_cpu_s"] = round(max(0.0, cpu_busy_s() - busy0 - (sum(os.times()[:2]) - own0)), 1)
        report["other_cpu_top"] = top_other_cpu(procs0, cpu_by_process(), {os.getpid()})
        report.update(quiet)
        res = report["results"]
        if all(b in res for b in BUILDERS):
            report["ours_over_reference"] = {
                "decode_tok_s": res["ours"]["decode_tok_s_median"] / res["reference"]["decode_tok_s_median"],
                "prefill_ms": res["ours"]["prefill_ms_median"] / res["reference"]["prefill_ms_median"],
            }
        reports.append(report)
    return reports


def prefill_logits(model_dir: Path, ids):
    """Logits [positions, V] of a prefill over ids [1, T] from an empty cache. A folder built with
    last-token logits (ours by default) gives 1 position, one with every position's logits gives T."""
    import numpy as np
    import onnxruntime as ort

    from builder.verify import index_dtype

    decoder = json.loads((model_dir / "genai_config.json").read_text())["model"]["decoder"]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(str(model_dir / decoder["filename"]), so, providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    names = decoder["inputs"]
    mask = names.get("attention_mask", "attention_mask")
    position = names.get("position_ids", "position_ids")
    feed = {
        names["input_ids"]: ids.astype(index_dtype(inputs[names["input_ids"]])),
        mask: np.ones(ids.shape, index_dtype(inputs[mask])),
    }
    if position in inputs:
        feed[position] = np.arange(ids.shape[1], dtype=np.int64)[None]
    # Every other input is a cache: KV with no past positions, and (hybrids) the recurrent states of
    # linear-attention layers (past.%d.conv / past.%d.recurrent) as zeros of their declared shapes.
    # Hybrids have KV inputs only for their full-attention layers, so go by what the graph declares.
    for name, info in inputs.items():
        if name in feed:
            continue
        dtype = np.float16 if "float16" in info.type else np.float32
        dims = [d if isinstance(d, int) else 0 for d in info.shape]  # the symbolic past length is 0
        feed[name] = np.zeros([1] + dims[1:], dtype)
    logits = session.run([decoder["outputs"]["logits"]], feed)[0]
    return logits[0].astype(np.float32)


def error_metrics(ref, out) -> dict:
    """Error of logits out against ref, both [positions, V]. The all-position figures only when both
    have every position: a last-token-logits model gives one row, and comparing it with each of ref's
    rows (numpy broadcasting) would measure nothing. "positions" says which were compared."""
    import numpy as np

    if out.shape[-1] != ref.shape[-1]:
        raise ValueError(f"vocabulary sizes differ: {out.shape[-1]} vs {ref.shape[-1]}")
    ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
    last_diff = out64[-1] - ref64[-1]
    metrics = {
        "positions": "all" if out.shape == ref.shape else "last",
        "nmse_last": float(np.square(last_diff).sum() / np.square(ref64[-1]).sum()),
        "max_abs_last": float(np.abs(last_diff).max()),
        "argmax_agree_last": bool(ref[-1].argmax() == out[-1].argmax()),
        "nmse_all": None,
        "max_abs_all": None,
        "argmax_agree_all": None,
    }
    if out.shape == ref.shape:
        diff = out64 - ref64
        metrics.update(
            nmse_all=float(np.square(diff).sum() / np.square(ref64).sum()),
            max_abs_all=float(np.abs(diff).max()),
            argmax_agree_all=float((ref.argmax(-1) == out.argmax(-1)).mean()),
        )
    return metrics


def accuracy_stage(size: str, checkpoint: Path, dirs: dict[str, str], tokens: int, seed: int, builds: dict) -> dict:
    import gc

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    print(f"[accuracy] {size}: fp32 transformers vs int4 cpu, {tokens} tokens", flush=True)
    config = json.loads((checkpoint / "config.json").read_text())
    config = config.get("text_config") or config  # ConditionalGeneration configs (Qwen3.5) nest it there
    ids = np.random.default_rng(seed).integers(0, config["vocab_size"], size=(1, tokens))
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(ids), use_cache=False).logits[0].float().numpy()
    del model
    gc.collect()
    result = {
        "size": size,
        "prompt_tokens": tokens,
        "seed": seed,
        "prompt_ids": "numpy.random.default_rng(seed).integers(0, vocab_size, (1, prompt_tokens))",
        "reference": "transformers fp32",
        "fp32_logits_rms": float(np.sqrt(np.square(ref, dtype=np.float64).mean())),
        "fp32_logits_max_abs": float(np.abs(ref).max()),
        "builders": {},
    }
    outs = {}
    for builder, path in dirs.items():
        graph = builds.get(builder, {}).get("graph") or (graph_facts(Path(path)) if Path(path).is_dir() else {})
        levels = graph.get("quant_attributes", {}).get("MatMulNBits", {}).get("accuracy_level")
        try:
            outs[builder] = prefill_logits(Path(path), ids)
            result["builders"][builder] = {"accuracy_level": levels, **error_metrics(ref, outs[builder])}
        except Exception as e:  # a model that does not run is a result
            result["builders"][builder] = {"accuracy_level": levels, "error": str(e).splitlines()[0][:300]}
        gc.collect()
    if all(b in outs for b in BUILDERS):  # how far apart the two int4 models are (reference as the baseline)
        result["ours_vs_reference"] = error_metrics(outs["reference"], outs["ours"])
    return result


# ----------------------------------------------------------------------------- report


def gb(n) -> str:
    return "-" if not n else f"{n / 1e9:.2f}"


def ratio(a, b, fmt="{:.2f}") -> str:
    return fmt.format(a / b) if a and b else "-"


def markdown(report: dict) -> str:
    lines = []
    if report["builds"]:
        lines += [
            "### Build (int4; ours / reference; ratio = ours / reference)",
            "",
            "| job | first | status | wall s | ratio | peak RSS GB | ratio | output GB | nodes | "
            "MatMulNBits accuracy_level | others' CPU s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for job in report["builds"]:
            o, r = job["ours"], job["reference"]

            def both(key, f):
                return f"{f(o.get(key))} / {f(r.get(key))}"

            status = "ok" if o["status"] == r["status"] == "ok" else f"{o['status']} / {r['status']}"
            acc = "{} / {}".format(
                *(
                    ",".join(
                        map(
                            str,
                            b.get("graph", {})
                            .get("quant_attributes", {})
                            .get("MatMulNBits", {})
                            .get("accuracy_level", ["-"]),
                        )
                    )
                    for b in (o, r)
                )
            )
            lines.append(
                f"| {job['size']} {job['ep']} | {job['first']} | {status} | "
                f"{both('wall_s', lambda v: f'{v:.1f}' if v else '-')} | {ratio(o['wall_s'], r['wall_s'])} | "
                f"{both('peak_rss_bytes', gb)} | {ratio(o['peak_rss_bytes'], r['peak_rss_bytes'])} | "
                f"{both('output_bytes', gb)} | "
                f"{o.get('graph', {}).get('nodes', '-')} / {r.get('graph', {}).get('nodes', '-')} | {acc} | "
                f"{both('other_cpu_s', lambda v: '-' if v is None else f'{v:.0f}')} |"
            )
        for job in report["builds"]:
            for b in BUILDERS:
                if job[b]["status"] != "ok":
                    lines.append(
                        f"\n{job['size']} {job['ep']} {b}: {job[b]['status']}; log tail: "
                        + " / ".join(job[b].get("log_tail", []))[-600:]
                    )
        lines += ["", "Node counts by op type (ours / reference):", ""]
        jobs = [j for j in report["builds"] if all("graph" in j[b] for b in BUILDERS)]
        if jobs:
            ops = sorted({op for j in jobs for b in BUILDERS for op in j[b]["graph"]["by_op_type"]})
            lines += [
                "| op type | " + " | ".join(f"{j['size']} {j['ep']}" for j in jobs) + " |",
                "|---|" + "---|" * len(jobs),
            ]
            for op in ops:
                cells = [" / ".join(str(j[b]["graph"]["by_op_type"].get(op, 0)) for b in BUILDERS) for j in jobs]
                lines.append(f"| {op} | " + " | ".join(cells) + " |")
    if report["runs"]:
        lines += [
            "",
            "### Run (onnxruntime-genai, provider cpu, int4 cpu models; medians of interleaved rounds)",
            "",
            "| model | prompt | new | rounds | decode tok/s ours / ref | ours/ref | paired | rounds ours "
            "faster | prefill ms ours / ref | ours/ref | paired | rounds ours faster | others' CPU s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for run in report["runs"]:
            res = run["results"]
            if all(b in res for b in BUILDERS):
                o, r = res["ours"], res["reference"]
                dec = [a / b for a, b in zip(o["decode_tok_s"], r["decode_tok_s"])]
                pre = [a / b for a, b in zip(o["prefill_ms"], r["prefill_ms"])]
                lines.append(
                    f"| {run['size']} | {run['prompt_tokens']} | {run['new_tokens']} | {run['rounds']} | "
                    f"{o['decode_tok_s_median']:.2f} / {r['decode_tok_s_median']:.2f} | "
                    f"{run['ours_over_reference']['decode_tok_s']:.3f} | {statistics.median(dec):.3f} | "
                    f"{sum(x > 1 for x in dec)}/{len(dec)} | "
                    f"{o['prefill_ms_median']:.0f} / {r['prefill_ms_median']:.0f} | "
                    f"{run['ours_over_reference']['prefill_ms']:.3f} | {statistics.median(pre):.3f} | "
                    f"{sum(x < 1 for x in pre)}/{len(pre)} | {run.get('other_cpu_s', '-')} |"
                )
            for b, err in run["load_errors"].items():
                lines.append(f"| {run['size']} | {run['prompt_tokens']} | | | {b} does not load: {err} | | | |")
        lines += [
            "",
            "decode ours/ref > 1: ours decodes faster; prefill ours/ref < 1: ours prefills faster. "
            "paired: median over rounds of ours/ref within the same round.",
        ]
    if report["accuracy"]:
        lines += [
            "",
            "### Accuracy (prefill logits vs transformers fp32)",
            "",
            "| model | builder | accuracy_level | NMSE last | max-abs last | NMSE all | max-abs all | "
            "argmax agree (all) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for acc in report["accuracy"]:
            for b, m in acc["builders"].items():
                level = ",".join(map(str, m.get("accuracy_level") or ["-"]))
                if "error" in m:
                    lines.append(f"| {acc['size']} | {b} | {level} | error: {m['error']} | | | | |")
                    continue
                lines.append(
                    f"| {acc['size']} | {b} | {level} | {m['nmse_last']:.3e} | {m['max_abs_last']:.3f} | "
                    f"{_all_positions(m)} |"
                )
            if "ours_vs_reference" in acc:
                m = acc["ours_vs_reference"]
                lines.append(
                    f"| {acc['size']} | ours vs reference | | {m['nmse_last']:.3e} | "
                    f"{m['max_abs_last']:.3f} | {_all_positions(m)} |"
                )
        first = report["accuracy"][0]
        lines += [
            "",
            f"{first['prompt_tokens']} prompt tokens (seeded random ids); all = every prompt position's "
            "logits, only where both models output every position (n/a: a model with last-token logits, "
            "ours by default); NMSE = sum((int4 - fp32)^2) / sum(fp32^2) (ours vs reference: reference in "
            "place of fp32).",
        ]
        scale = [
            f"{a['size']} RMS {a['fp32_logits_rms']:.3f}, max-abs {a['fp32_logits_max_abs']:.2f}"
            for a in report["accuracy"]
            if "fp32_logits_rms" in a
        ]
        if scale:
            lines[-1] += " fp32 logits: " + "; ".join(scale) + "."
    return "\n".join(lines)


def _all_positions(m: dict) -> str:
    # None where one side has only the last position's logits (error_metrics).
    if m.get("nmse_all") is None:
        return "n/a (last only) | n/a | n/a"
    return f"{m['nmse_all']:.3e} | {m['max_abs_all']:.3f} | {m['argmax_agree_all']:.3f}"


def environment() -> dict:
    import psutil

    versions = {}
    for pkg in ("onnxruntime", "onnxruntime_genai", "onnx", "onnx_ir", "torch", "transformers", "numpy"):
        try:
            versions[pkg] = __import__(pkg).__version__
        except Exception as e:
            versions[pkg] = f"not importable: {e}"
    from builder.version import __version__

    versions["builder"] = __version__
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
        except Exception:
            return None

    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty_files": len([x for x in (git("status", "--porcelain") or "").splitlines() if x.strip()]),
        "gnu_time": os.access(GNU_TIME, os.X_OK),
    }


# ----------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0.6b,1.7b,4b", help="Checkpoints to build int4 cpu (default: %(default)s).")
    ap.add_argument(
        "--webgpu-sizes",
        help="Of --sizes, those also built int4 webgpu ('' for none; default: 4b, where --sizes has it).",
    )
    ap.add_argument(
        "--checkpoints",
        type=Path,
        default=Path("/tmp/ckpt"),
        help="Folder of qwen3-<size> checkpoints, made when missing (default: %(default)s).",
    )
    ap.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/bench-builders"),
        help="Where the built folders and build logs go (default: %(default)s).",
    )
    ap.add_argument("--skip-build", action="store_true", help="Reuse the built folders under --work.")
    ap.add_argument("--skip-run", action="store_true", help="No prefill/decode timing.")
    ap.add_argument("--skip-accuracy", action="store_true", help="No logits comparison.")
    ap.add_argument(
        "--run-sizes", help="Of --sizes, those timed under onnxruntime-genai (default: 0.6b, where --sizes has it)."
    )
    ap.add_argument(
        "--accuracy-sizes", help="Of --sizes, those compared with fp32 (default: 0.6b, where --sizes has it)."
    )
    ap.add_argument("--prompts", default="128,512", help="Prompt lengths to time (default: %(default)s).")
    ap.add_argument("--new-tokens", type=int, default=64, help="Decoded tokens per timed run (default: %(default)s).")
    ap.add_argument("--rounds", type=int, default=5, help="Interleaved timed rounds (default: %(default)s).")
    ap.add_argument("--accuracy-tokens", type=int, default=32, help="Prompt length for accuracy (default: 32).")
    ap.add_argument("--seed", type=int, default=0, help="Seed of the accuracy prompt ids (default: 0).")
    ap.add_argument("--build-timeout", type=int, default=3600, help="Seconds before a build is killed.")
    ap.add_argument(
        "--reference-first",
        action="store_true",
        help="The first job builds with the reference first (default: ours first); then it alternates.",
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=600,
        help="Before each build and timing, wait up to this many seconds for other processes "
        "to leave the CPUs idle (default: %(default)s).",
    )
    ap.add_argument(
        "--json",
        type=Path,
        help="Raw results (default: results.json under --work; a run without --json no longer "
        "overwrites the committed docs/results/builders.json).",
    )
    ap.add_argument("--markdown", type=Path, help="Also write the table here.")
    ap.add_argument("--render", type=Path, metavar="JSON", help="Only print the tables of a saved results file.")
    args = ap.parse_args()
    if args.render:
        try:
            tables = markdown(json.loads(args.render.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            ap.error(f"--render {args.render}: not a results file of this script ({type(e).__name__}: {e})")
        try:
            print(tables)
        except BrokenPipeError:  # `--render FILE | head`: the reader stopped, the file was fine
            from builder.cli import broken_pipe

            return broken_pipe()
        return 0

    def sizes(text):
        return [size_name(s) for s in text.split(",") if s.strip()]

    # Checked before the checkpoints are made (GBs, minutes): they failed only once those were there.
    from support import synthetic

    known = set(synthetic.REAL_CONFIGS) | set(synthetic.REAL_SHAPE_CONFIGS)
    unknown = [s for s in sizes(args.sizes) if s not in known]
    if unknown:
        ap.error(f"--sizes: no checkpoint {unknown[0]}; choose from {', '.join(sorted(known))}")
    # Either made GBs of checkpoints and measured nothing, exit 0.
    if not sizes(args.sizes):
        ap.error(f"--sizes {args.sizes!r} names no checkpoint; pass some of {', '.join(sorted(known))}")
    if args.skip_build and args.skip_run and args.skip_accuracy:
        ap.error("--skip-build, --skip-run and --skip-accuracy leave nothing to do; --render JSON prints saved results")
    # A size given to these that --sizes lacks, or a typo of one, was left out without a word: the run
    # then timed or compared nothing. Their defaults still apply only where --sizes has them.
    for flag, given in (
        ("--webgpu-sizes", args.webgpu_sizes),
        ("--run-sizes", args.run_sizes),
        ("--accuracy-sizes", args.accuracy_sizes),
    ):
        for s in sizes(given or ""):
            if s not in known:
                ap.error(f"{flag}: no checkpoint {s}; choose from {', '.join(sorted(known))}")
            if s not in sizes(args.sizes):
                ap.error(f"{flag}: {s} is not in --sizes ({args.sizes}), which says what is built; add it there")
    args.webgpu_sizes = "4b" if args.webgpu_sizes is None else args.webgpu_sizes
    args.run_sizes = "0.6b" if args.run_sizes is None else args.run_sizes
    args.accuracy_sizes = "0.6b" if args.accuracy_sizes is None else args.accuracy_sizes
    try:
        prompts = [int(p) for p in args.prompts.split(",")]
    except ValueError:
        ap.error(f"--prompts {args.prompts!r}: give token counts such as 128,512")
    if min(prompts) < 1:
        ap.error("--prompts: each prompt needs at least 1 token")
    if args.new_tokens < 2 or args.rounds < 1 or args.accuracy_tokens < 1:  # before hours of builds
        ap.error("--new-tokens must be at least 2 (the first closes the prefill), --rounds and --accuracy-tokens 1")
    if args.build_timeout < 1:  # every build was killed at once, and recorded as timed out
        ap.error("--build-timeout must be at least 1 second")
    if args.json is None:
        args.json = args.work / "results.json"
    # Found unwritable only after the first build (--json) or the whole run (--markdown): a traceback.
    for flag, path in (("--work", args.work), ("--json", args.json), ("--markdown", args.markdown)):
        if path is not None and not can_write(path, folder=flag == "--work", make_parents=flag != "--markdown"):
            ap.error(f"{flag} {path}: not a place this run can write; pass one under a folder you can write")
    if missing := missing_stage_modules(args):
        ap.error(missing)
    # The builds run in the checkout (cwd=REPO, for `python -m builder`): a relative --checkpoints or
    # --work named folders there, every build failed ("not a local folder") or wrote where none was read.
    args.checkpoints, args.work = args.checkpoints.absolute(), args.work.absolute()
    build_sizes = sizes(args.sizes)
    jobs = [(s, "cpu") for s in build_sizes] + [(s, "webgpu") for s in sizes(args.webgpu_sizes) if s in build_sizes]
    run_sizes = [] if args.skip_run else [s for s in sizes(args.run_sizes) if s in build_sizes]
    acc_sizes = [] if args.skip_accuracy else [s for s in sizes(args.accuracy_sizes) if s in build_sizes]

    started = time.perf_counter()
    report = {
        "command": [Path(sys.argv[0]).as_posix()] + sys.argv[1:],
        "environment": environment(),
        "method": {
            "build": "one subprocess per build under /usr/bin/time -v; checkpoint read once before "
            "each build (page cache warm); wait for idle CPUs before each build; the "
            "builder going first alternates by job",
            "run": "scripts/bench_genai.py: 1 warm-up round, then rounds each in an order shuffled by "
            "random.Random(0), medians",
            "accuracy": "prefill logits vs AutoModelForCausalLM fp32 (not dequantized); NMSE / max-abs / "
            "argmax over all positions only where both models output every position's logits (each "
            "result's 'positions': 'all' or 'last'), else null",
        },
        "checkpoints": {},
        "builds": [],
        "runs": [],
        "accuracy": [],
    }
    args.work.mkdir(parents=True, exist_ok=True)
    for s in build_sizes:
        report["checkpoints"][s] = ensure_checkpoint(s, args.checkpoints / s)

    dirs = {(s, ep): {b: str(args.work / f"{s}-int4-{ep}" / b) for b in BUILDERS} for s, ep in jobs}
    for i, (s, ep) in enumerate(jobs):
        if args.skip_build:
            job = {"size": s, "ep": ep, "first": "-", "reused": True}
            for b in BUILDERS:
                out = Path(dirs[(s, ep)][b])
                ok = (out / "model.onnx").is_file()
                job[b] = {"status": "ok (reused)" if ok else "missing", "wall_s": None, "peak_rss_bytes": None}
                if ok:
                    job[b].update(output_bytes=folder_bytes(out), graph=graph_facts(out))
            report["builds"].append(job)
            continue
        order = list(BUILDERS) if (i + args.reference_first) % 2 == 0 else list(reversed(BUILDERS))
        job = {"size": s, "ep": ep, "first": order[0]}
        ckpt = args.checkpoints / s
        for b in order:
            out = Path(dirs[(s, ep)][b])
            out.parent.mkdir(parents=True, exist_ok=True)
            job[b] = run_build(b, ckpt, ep, out, out.parent / f"{b}.log", args.build_timeout, args.quiet_wait)
        report["builds"].append(job)
        _save(report, args.json, started)  # partial results survive a later crash

    def usable(s, ep="cpu"):
        return {b: d for b, d in dirs[(s, ep)].items() if (Path(d) / "model.onnx").is_file()}

    for s in run_sizes:
        report["runs"] += run_stage(s, usable(s), prompts, args.new_tokens, args.rounds, args.quiet_wait)
        _save(report, args.json, started)
    builds_by_size = {job["size"]: job for job in report["builds"] if job["ep"] == "cpu"}
    for s in acc_sizes:
        report["accuracy"].append(
            accuracy_stage(
                s, args.checkpoints / s, usable(s), args.accuracy_tokens, args.seed, builds_by_size.get(s, {})
            )
        )
        _save(report, args.json, started)

    _save(report, args.json, started)
    table = markdown(report)
    print()
    print(table)
    print(f"\ntotal {report['total_s']:.0f} s; raw results: {args.json}")
    if args.markdown:
        args.markdown.write_text(table + "\n")
    if failed := failed_work(report):  # the table and the JSON say it too; the exit status tells a script
        print(f"error: {'; '.join(failed)}; all results, these included, are in {args.json}", file=sys.stderr)
        return 1
    return 0


def failed_work(report: dict) -> list[str]:
    """What of the run failed (a build, a model that did not load or run, an accuracy comparison),
    each with why. A run with any exited 0 below its table, as if both builders had been measured."""
    failed = []
    for job in report["builds"]:
        for b in BUILDERS:
            result = job[b]
            what = f"{b} build of {job['size']} int4 {job['ep']}"
            if result["status"] == "missing":  # --skip-build: nothing to reuse, so nothing of it measured
                failed.append(f"{what}: missing (--skip-build found no model.onnx to reuse under --work)")
            elif not result["status"].startswith("ok"):  # "ok", "ok (reused)"
                why = _log_reason(result.get("log_tail", []))
                failed.append(f"{what}: {result['status']}" + (f": {why}; see {result['log']}" if why else ""))
    for run in report["runs"]:
        for b, error in run["load_errors"].items():
            failed.append(f"{b} {run['size']} did not load or run in the timing: {error[:200]}")
    for acc in report["accuracy"]:
        for b, m in acc["builders"].items():
            if "error" in m:
                failed.append(f"{b} {acc['size']} did not run in the accuracy stage: {m['error'][:200]}")
    return failed


def _log_reason(tail: list[str]) -> str:
    """The line of a build log's tail that says why: the builder's `error:` line, else (a traceback)
    the last line before /usr/bin/time's own."""
    lines = [line.strip() for line in tail if not line.startswith(("Command exited with", "Command terminated by"))]
    reason = next((line for line in reversed(lines) if line.startswith("error: ")), lines[-1] if lines else "")
    return reason.removeprefix("error: ")[:600]


def missing_stage_modules(args) -> str | None:
    """Why the stages asked for cannot run here, or None: the reference builder
    (onnxruntime_genai.models.builder) imports onnx_ir, torch and transformers, which only the bench
    extra brings. Without them every reference build failed, after the checkpoints (GBs) and our
    builds, and the run ended with exit 0 and nothing to compare."""
    from builder.verify import missing_modules

    needs = {"psutil": "the CPU and memory figures"}
    if not args.skip_build:
        needs |= dict.fromkeys(("onnxruntime_genai", "onnx_ir", "torch", "transformers"), "the reference builder")
    if not args.skip_run:
        needs["onnxruntime_genai"] = "the timing"
    if not args.skip_accuracy:
        needs |= {m: needs.get(m, "the accuracy stage") for m in ("torch", "transformers")}
    missing = missing_modules(needs)
    if not missing:
        return None
    used = ", ".join(f"{m} ({needs[m]})" for m in missing)
    return f"it needs {used}, which the bench extra brings: pip install -e '.[bench]' in the builder's checkout"


def _save(report: dict, path: Path, started: float) -> None:
    report["total_s"] = round(time.perf_counter() - started, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    from interrupt import run_main

    run_main(main, "what finished before is saved in the --json file (default: results.json under --work)")
