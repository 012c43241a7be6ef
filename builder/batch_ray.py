"""The Ray executor: `python -m builder batch FILE.yaml --executor ray [--ray-address ADDR]`.

Each job is one Ray task running the same job body as the local executor
(batch_exec.run_job), with resources from what it needs:
- CPUs: the build's threads, the cluster's CPUs split over --jobs (as the local
  executor splits one machine's cores), at most the largest node's.
- memory: an estimate of the build's peak resident memory (memory_estimate).
A worker or node that dies mid-job is retried on any node, at most MAX_RETRIES
times; a failed build (bad input or a builder bug) comes back as a result, not
an exception, so Ray never retries it. Builds publish with one rename (or swap) from a
staging folder, so a killed attempt leaves only a staging folder, which the
next attempt or the driver removes.

output_root must be one storage every node sees at the same path; check()
proves it before any job starts by writing a probe file here and reading it
on every node.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

from builder.batch_exec import STOPPED_BY, Executor, remove_staging, run_job
from builder.kit.errors import BuilderError
from builder.kit.selection import format_for
from builder.verify import VERIFY_BASE_BYTES, VERIFY_BYTES_PER_PARAM, verify_memory_bytes

MAX_RETRIES = 2  # attempts after the first, for workers or nodes that died
PROBE_TIMEOUT_S = 120  # every node answers the shared-storage probe within this
GRACE_S = 5  # a cancelled build that has not stopped by then is killed (the driver
# removes its staging folder: Ray may not deliver the interrupt to a task)
GB = 1e9

# Peak resident memory of builds, from the peak_rss_bytes their build reports record
# (docs/cluster.md has the table): a build process with onnx and numpy loaded peaks near
# 0.35 GB for small models, a Ray worker adds about 0.1 GB; weights stream in 64 MB chunks,
# int4 embeddings included (untied ones are int4 tables too). A float lm_head of its own is
# transposed whole, about 8 bytes per element (twice its float32 size): an fp16 build of an
# untied Qwen3-8B-shaped checkpoint peaked at 5.0 GB, its int4 build at 0.59 GB, fp16/fp32
# Qwen3-0.6B (tied: the lm_head reads the Gather's table) at 0.57/0.56 GB. verify loads
# torch and transformers (about 0.3 GB) and the model in float32 beside the ONNX session.
BASE_BYTES = 0.5 * GB
STREAM_BYTES = 0.2 * GB
FLOAT_BYTES_PER_ELEMENT = 8
MEASURED_MARGIN = 1.25  # on a peak the job's own earlier build recorded


def memory_estimate(options) -> tuple[int, str]:
    """(bytes, how it was derived) for one job's memory request."""

    from builder.output_dir import REPORT_NAME

    try:  # the same job built before: its own measured peak is the best estimate
        report = json.loads((Path(options.output) / REPORT_NAME).read_text())
        same = report["options"]["precision"] == options.precision and report["options"]["ep"] == options.ep
        same = same and _same_checkpoint(options.model, report)
        if same and report.get("peak_rss_bytes") and bool(report.get("verify")) >= options.verify:
            peak = int(report["peak_rss_bytes"])
            return int(peak * MEASURED_MARGIN), f"{MEASURED_MARGIN} x the {peak / GB:.2f} GB its last build measured"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    shapes = _shapes(options.model)
    if shapes is None:  # the build fails on its own and says why; it needs little memory for that
        return int(BASE_BYTES), "checkpoint unreadable here; the build will say why"
    numel = {name: _prod(shape) for name, shape in shapes.items()}
    float_head = not format_for("lm_head", options).quantized
    # The embedding under any prefix (a ConditionalGeneration checkpoint: model.language_model.).
    embed = max((n for n in numel if n.endswith("embed_tokens.weight")), key=numel.get, default=None)
    table = numel.get("lm_head.weight") or (numel[embed] if embed else 0)
    # A float lm_head [H, V] of its own (untied, or tied beside a quantized embedding) is read
    # whole to be transposed; a tied float one reads the Gather's table in the graph.
    untied = "lm_head.weight" in numel and not _tied_in_config(options.model)
    own = untied or format_for("model.embed_tokens", options).quantized
    if float_head and own:
        kept, what = table, "its lm_head, transposed whole"
    else:
        kept, what = 0, ""
    total = BASE_BYTES + STREAM_BYTES + FLOAT_BYTES_PER_ELEMENT * kept
    how = (
        f"{(BASE_BYTES + STREAM_BYTES) / GB:.1f} GB + 8 B x {kept:,} elements of {what}"
        if kept
        else f"{total / GB:.1f} GB for a streamed {options.precision} build"
    )
    if options.verify and options.ep == "cpu":
        # transformers ties a stored lm_head to the embedding, as the build's own verify check counts it
        tied_head = numel.get("lm_head.weight", 0) if _tied_in_config(options.model) else 0
        params = sum(numel.values()) - tied_head
        total += verify_memory_bytes(params)
        how += f" + {VERIFY_BASE_BYTES / GB:.1f} GB + {VERIFY_BYTES_PER_PARAM} B x {params:,} parameters for verify"
    return int(total), how


def _tied_in_config(model: str) -> bool:
    """Whether config.json (here, or in the hub cache) ties the lm_head to the embedding: some
    tied checkpoints hold an lm_head.weight too, which the build does not read. Unknown: untied,
    the larger estimate."""
    from builder.kit.checkpoint import configured_tie
    from builder.kit.model_source import cached_hub_snapshot, is_hub_id

    return configured_tie(cached_hub_snapshot(model) if is_hub_id(model) else Path(model)) is True


def _same_checkpoint(model: str, report: dict) -> bool:
    """Whether the output was built from these very weights: a job whose model became an 8x larger
    checkpoint asked for the small one's measured peak. Only a local or cached checkpoint whose
    report holds a header fingerprint can say so; a content hash (checkpoint-hash) would read
    every weight on the driver."""
    from builder.kit.checkpoint import Checkpoint
    from builder.kit.model_source import cached_hub_snapshot

    if (report.get("options") or {}).get("checkpoint_hash"):
        return False
    try:
        folder = Path(model) if os.path.isdir(model) else cached_hub_snapshot(model)
        return folder is not None and Checkpoint(folder).fingerprint(False) == report["checkpoint"]["fingerprint"]
    except (BuilderError, OSError, KeyError, TypeError, ValueError):
        return False


def _shapes(model: str) -> dict[str, tuple[int, ...]] | None:
    """Tensor shapes from safetensors headers, without downloading weights to the driver:
    a local folder; a hub id from the local cache, else its headers over HTTP (range reads)."""
    from builder.kit.checkpoint import Checkpoint
    from builder.kit.model_source import HUB_FILES

    if os.path.isdir(model):
        try:
            return Checkpoint(Path(model)).shapes()
        except (BuilderError, OSError):
            return None
    try:
        from huggingface_hub import get_safetensors_metadata, snapshot_download
    except ImportError:
        return None
    try:
        return Checkpoint(Path(snapshot_download(model, allow_patterns=HUB_FILES, local_files_only=True))).shapes()
    except Exception:  # not cached, or only partly: ask the hub for the headers alone
        pass
    try:
        meta = get_safetensors_metadata(model)
    except Exception:  # offline, gated, or not a safetensors repo
        return None
    return {name: tuple(info.shape) for file in meta.files_metadata.values() for name, info in file.tensors.items()}


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _ray():
    try:
        import ray
        import ray._private.ray_constants as ray_constants
    except ImportError:
        raise BuilderError(
            "--executor ray needs Ray on this machine and every node: pip install '.[ray]' from this "
            "repository (or pip install ray)"
        ) from None
    # Ray's native crash handler (absl's), which ray.init installs in the driver, also takes SIGTERM:
    # one in the moment after ray.init connects printed its C++ stack dump over the batch's own
    # message. The batch handles SIGTERM itself; the workers, other processes, keep the handler.
    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
    _quiet_ray_reports()
    return ray


# What the cluster reports of this driver's tasks, which Ray's driver prints into stdout from a thread
# of its own (ray._private.worker.listen_error_messages): for each worker that died mid-job a paragraph
# of IDs and likely causes, then "There are 2 retries remaining". The batch reports those itself (the
# job's line, its attempts and their nodes); Ray's ran between the job lines, and some after the summary.
_REPORTED_BY_THE_BATCH = re.compile(
    r"A worker died or was killed while executing a task|Task \S+ failed\. There (?:are|is) \d+ retr"
)


def _quiet_ray_reports() -> None:
    """Leave out of the batch's output what Ray reports of its workers' deaths and retries; Ray's
    other reports go to stderr, not into the batch's stdout. For the rest of the process: reports
    of the batch's last tasks come after it has ended."""
    try:
        import ray._private.worker as ray_worker

        shown = ray_worker.print_to_stdstream
    except (ImportError, AttributeError):  # another Ray: its reports stay as they are
        return
    if getattr(shown, "quieted_by_builder", False):
        return

    def print_to_stdstream(data, *args, **kwargs):
        if data.get("pid") == "raylet":  # the listener's mark for the cluster's reports
            lines = [line for line in data.get("lines", []) if not _REPORTED_BY_THE_BATCH.search(line)]
            if not lines:
                return
            data = {**data, "lines": lines, "is_err": True}
        shown(data, *args, **kwargs)

    print_to_stdstream.quieted_by_builder = True
    ray_worker.print_to_stdstream = print_to_stdstream


def _stale_ray_start() -> str | None:
    """The address `ray start --head` last recorded on this machine (in Ray's temp folder) if nothing
    answers there now, else None. ray.init() without an address joins that cluster, and when it was
    gone (stopped without `ray stop`, or its machine rebooted) waited for it without end (still at it
    after 11 minutes), printing 'Failed to connect to GCS' every few seconds; a Ctrl-C or SIGTERM
    took effect only between its connection attempts, some 40 s apart."""
    try:
        from ray._private.utils import read_ray_address

        recorded = read_ray_address()
    except Exception:  # another Ray, or an unreadable record: ray.init decides
        return None
    return recorded if recorded and _unreachable(recorded) else None


def _job_task(options: dict, threads: int, attempts: str, steps: str) -> dict:
    """A job as a Ray task; marks each attempt (named by the worker's pid) so the driver can tell retries,
    and keeps its build's latest progress step in the file `steps` for the driver's status line."""
    import ray

    node = f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"
    Path(attempts, f"{os.getpid()}-{secrets.token_hex(4)}").write_text(node)
    result = run_job(options, threads, _StepFile(Path(steps)))
    if result.pop(STOPPED_BY, None) in (signal.SIGTERM, signal.SIGHUP):
        # What `ray stop` and a node shutting down (a preempted pod) send a worker; the batch stops
        # a task with ray.cancel, which arrives as SIGINT. The build has removed its staging folder;
        # the worker exits as Ray's own SIGTERM handler makes it, so Ray counts a dead worker and
        # retries the job. Returned, the result read 'interrupted' in a batch nobody interrupted.
        sys.exit(1)
    result["node"] = node
    return result


class _StepFile:
    """A build's progress steps as (done, total, what), the latest replacing the one before in a file
    of the run folder, which every node shares (check() proved it): a Ray task has no pipe to the
    driver. Each is written aside and renamed over the last, so the driver reads a whole step; a
    write that fails is dropped, as a display never fails a build. A build has a step per layer and
    a few more, so a small write each is no load."""

    def __init__(self, path: Path):
        self.path = path
        self.aside = path.with_name(f".{path.name}.{os.getpid()}")  # one per attempt: a retry's own

    def __call__(self, done: int, total: int, what: str) -> None:
        try:
            self.aside.write_text(json.dumps([int(done), int(total), str(what)[:200]]))
            os.replace(self.aside, self.path)
        except (OSError, ValueError):
            pass


def _latest_step(path: Path) -> tuple[int, int, str] | None:
    """The step a job's _StepFile holds, or None before its first (or if it cannot be read)."""
    try:
        done, total, what = json.loads(path.read_text())
        return int(done), int(total), str(what)
    except (OSError, ValueError, TypeError):
        return None


def _first_attempt(attempts: Path) -> Path | None:
    """The mark the first attempt of a job left when it started running, or None."""
    try:
        return min(attempts.iterdir(), key=lambda p: p.stat().st_mtime, default=None)
    except OSError:
        return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _log_folder(ray) -> str:
    """Where Ray keeps this session's logs on a node (the same path on each, from its temp folder)."""
    try:
        return ray._private.worker._global_node.get_logs_dir_path()
    except Exception:  # a Ray without that internal: its default place
        return "/tmp/ray/session_latest/logs"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the task's name in its tracebacks


def _started_at(mark: Path) -> float:
    """When an attempt started, on this process's perf_counter clock (from the mark's age, so a
    job seen late is not timed short; never in the future if the node's clock runs ahead)."""
    try:
        age = max(0.0, time.time() - mark.stat().st_mtime)
    except OSError:
        age = 0.0
    return time.perf_counter() - age


def _probe_task(probe: str, models: list[str]) -> dict:
    import ray

    node = f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"
    try:
        seen = Path(probe).read_text()
    except OSError as e:
        seen = f"cannot read it: {e.strerror or e}"
    missing = [m for m in models if not Path(m, "config.json").is_file()]
    return {"node": node, "seen": seen, "missing": missing}


def _unreachable(address: str) -> str | None:
    """Why nothing answers at a HOST:PORT (or ray://HOST:PORT) address, or None. ray.init keeps
    retrying an address where nothing listens, printing its warnings, for as long as it is left."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return None  # 'auto' and the like: ray.init resolves those itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as e:
        return str(e.strerror or e)
    return None


def _token_available() -> bool:
    return bool(
        os.environ.get("RAY_AUTH_TOKEN")
        or os.environ.get("RAY_AUTH_TOKEN_PATH")
        or (Path.home() / ".ray" / "auth_token").is_file()
    )


def _session_processes() -> list[int]:
    """The processes of a Ray session this process started: their command lines name its folder,
    session_<time>_<this pid>."""
    mark, found = f"_{os.getpid()}/", []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "session_" in text and mark in text and cmdline.parent.name != str(os.getpid()):
            found.append(int(cmdline.parent.name))
    return found


def _end_processes(pids, grace_s: float = 3.0) -> None:
    """SIGTERM those of `pids` still running, then SIGKILL the ones left after grace_s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
                alive.append(pid)
        deadline = time.monotonic() + grace_s
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [p for p in alive if Path(f"/proc/{p}").exists() and not _zombie(p)]
        if not alive:
            return
        pids = alive


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, address: str | None, parallel: int):
        address = address or os.environ.get("RAY_ADDRESS") or None
        if address and "RAY_AUTH_MODE" not in os.environ and _token_available():
            # Clusters started by recent Ray use token authentication; a joining driver sends
            # the token it has only when told to, and reads the mode when ray is imported.
            os.environ["RAY_AUTH_MODE"] = "token"
        ray = self.ray = _ray()
        self.parallel, self.started_here, self.interrupted = parallel, False, False
        if not ray.is_initialized():
            down = _unreachable(address) if address else None
            if down:
                raise BuilderError(
                    f"--executor ray: nothing answers at {address} ({down}); start the cluster with "
                    "'ray start --head' there, or pass the address 'ray start' printed as --ray-address"
                )
            # ray.init puts in a SIGTERM handler that exits with code 15 (a SIGTERM during ray.init
            # meets it); afterwards the handler the process had (the batch's Stop) is put back.
            sigterm_before = signal.getsignal(signal.SIGTERM)
            try:
                if address:
                    ray.init(address=address, log_to_driver=False)
                else:  # no cluster named: the one `ray start --head` runs here, else a local one
                    stale = _stale_ray_start()
                    if stale:
                        print(
                            f"note: nothing answers at {stale}, where 'ray start --head' last ran on this "
                            "machine; starting a local Ray instance for this batch",
                            file=sys.stderr,
                            flush=True,
                        )
                    ray.init(address="local" if stale else None, include_dashboard=False, log_to_driver=False)
                    self.started_here = True
            except SystemExit as e:
                if e.code != signal.SIGTERM or not callable(sigterm_before):
                    raise
                # ray.init's handler (sys.exit(15)) ended it midway: the batch exited 15 without a
                # word and left the Ray agents it had started running. Those go; the batch's Stop
                # notes the signal as at any other point of the start, and no job starts.
                with contextlib.suppress(Exception):
                    ray.shutdown()  # it leaves the raylet's agents of a half-made node running
                _end_processes(_session_processes())
                time.sleep(0.5)  # an agent the raylet started as it died
                _end_processes(_session_processes())
                self.interrupted = True
                sigterm_before(signal.SIGTERM, None)
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                raise BuilderError(
                    f"--executor ray: could not join {where} ({str(e).splitlines()[0]}); "
                    "start it with 'ray start --head' or pass --ray-address HOST:PORT, and if it "
                    "uses token authentication put its token in ~/.ray/auth_token or "
                    "$RAY_AUTH_TOKEN"
                ) from None
            finally:
                if sigterm_before is not None:
                    signal.signal(signal.SIGTERM, sigterm_before)
        self.address = address or "local"
        self.run_folder: Path | None = None
        self._run_folder_held = None  # its lock, once made (builder.output_dir.hold_working_folder)

    # ---- before anything runs ----------------------------------------------------------

    def _nodes(self) -> list[dict]:
        return [n for n in self.ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]

    def check(self, jobs, output_root: Path) -> None:
        if self.interrupted:  # no cluster to check: the batch stops before any job
            return
        nodes = self._nodes()
        if not nodes:
            raise BuilderError(f"--executor ray: the cluster at {self.address} has no live node with CPUs")
        cpus = [n["Resources"]["CPU"] for n in nodes]
        self.threads = int(max(1, min(max(cpus), sum(cpus) // self.parallel)))
        refused = []
        for job in jobs:
            job.memory_bytes, job.memory_how = memory_estimate(job.options)
            fits = [
                n
                for n in nodes
                if n["Resources"]["CPU"] >= self.threads and n["Resources"].get("memory", 0) >= job.memory_bytes
            ]
            if not fits:
                biggest = max(n["Resources"].get("memory", 0) for n in nodes)
                refused.append(
                    f"{job.name}: needs {self.threads} CPUs and {job.memory_bytes / GB:.2f} GB "
                    f"({job.memory_how}); the largest node offers {biggest / GB:.2f} GB of Ray "
                    f"memory and {max(cpus):g} CPUs"
                )
        if refused:
            raise BuilderError(
                "--executor ray: no node can run "
                + ("this job" if len(refused) == 1 else f"these {len(refused)} jobs")
                + " (nothing was built):\n  "
                + "\n  ".join(refused)
                + "\nadd a node with that much memory, or build them with the local executor "
                "on a machine that has it"
            )
        self._check_shared(jobs, output_root, nodes)

    def _check_shared(self, jobs, output_root: Path, nodes: list[dict]) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from builder.output_dir import hold_working_folder, remove_abandoned

        output_root.mkdir(parents=True, exist_ok=True)
        remove_abandoned(output_root.glob(".builder-batch-run-*"))  # of drivers killed with SIGKILL
        self.run_folder = output_root / f".builder-batch-run-{secrets.token_hex(4)}"
        (self.run_folder / "attempts").mkdir(parents=True)
        (self.run_folder / "steps").mkdir()
        self._run_folder_held = hold_working_folder(self.run_folder)
        probe, token = self.run_folder / "probe", f"{socket.gethostname()} {secrets.token_hex(8)}"
        probe.write_text(token)
        # Every local checkpoint (a path, not a hub id) must be seen by every node: one seen only here
        # was blamed on storage, and a mistyped one was built at its turn, after the others.
        models = sorted({j.options.model for j in jobs if os.path.isabs(j.options.model)})
        task = self.ray.remote(_probe_task)
        refs = [
            task.options(
                num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(str(probe), models)
            for n in nodes
        ]
        try:
            answers = self.ray.get(refs, timeout=PROBE_TIMEOUT_S)
        except self.ray.exceptions.GetTimeoutError:
            raise BuilderError(
                f"--executor ray: not every node answered the output_root check within "
                f"{PROBE_TIMEOUT_S} s; check that the cluster's workers start"
            ) from None
        blind = [a for a in answers if a["seen"] != token]
        if blind:
            raise BuilderError(
                f"output_root {output_root} is not shared storage: the node(s) "
                + ", ".join(f"{a['node']} ({a['seen'][:60]})" for a in blind)
                + " do not see the file this machine wrote there; put output_root on a "
                "filesystem every node mounts at the same path (NFS, CephFS, Lustre...)"
            )
        lacking = {m: [a["node"] for a in answers if m in a["missing"]] for m in models}
        for model, nodes_without in lacking.items():
            if not nodes_without:
                continue
            if len(nodes_without) == len(answers) and not os.path.isdir(model):
                # on no node and not here either: a mistyped path, refused as locally
                raise BuilderError(f"no folder {model} here nor on any node; check the job's model path")
            if len(nodes_without) < len(answers) or os.path.isfile(os.path.join(model, "config.json")):
                raise BuilderError(
                    f"model folder {model} is not visible on node {nodes_without[0]}; "
                    "put local checkpoints on shared storage too, or use hub ids"
                )
            # a folder without config.json everywhere fails its own job when built, as locally

    # ---- running -----------------------------------------------------------------------

    def run(self, jobs, on_start, on_end, stop, on_step=None) -> None:
        ray = self.ray
        # max_calls=1: a fresh worker process per job, as locally, so a job's peak RSS is its own
        task = ray.remote(max_calls=1)(_job_task)
        queue, running = list(jobs), {}
        while (queue or running) and stop.signum is None:
            while queue and len(running) < self.parallel:
                job = queue.pop(0)
                attempts = self.run_folder / "attempts" / str(id(job))
                attempts.mkdir()
                steps = self.run_folder / "steps" / str(id(job))
                ref = task.options(
                    num_cpus=self.threads,
                    memory=job.memory_bytes,
                    max_retries=MAX_RETRIES,
                    retry_exceptions=False,
                    name=f"build {job.name}",
                ).remote(job.options.to_dict(), self.threads, str(attempts), str(steps))
                running[ref] = [job, None, attempts, steps, None]  # started: when its first attempt runs
            # A task waits in Ray's queue until a node has its CPUs and memory: a job starts,
            # and its time counts, when its first attempt marks itself, not when it is queued.
            for entry in running.values():
                if entry[1] is None and _first_attempt(entry[2]):
                    entry[1] = _started_at(_first_attempt(entry[2]))
                    on_start(entry[0])
                if entry[1] is not None and on_step is not None:
                    step = _latest_step(entry[3])
                    if step is not None and step != entry[4]:
                        entry[4] = step
                        on_step(entry[0], *step)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            for ref in ready:
                job, started, attempts, *_ = running.pop(ref)
                if started is None:  # it ran and ended between two looks
                    marked = _first_attempt(attempts)
                    started = _started_at(marked) if marked else time.perf_counter()
                    on_start(job)
                self._collect(job, ref, started, attempts)
                on_end(job)
        if stop.signum is None:
            return
        # Only tasks still running are cancelled, and only those left after the grace are
        # force-cancelled: cancelling a task that had finished (or had stopped for the first
        # cancel) aborted Ray itself in about 1 of 3 stopped batches ("Check failed ... Tried
        # to complete task that was not pending"), with no summary and its agents left running.
        done, pending = ray.wait(list(running), num_returns=len(running), timeout=0)
        for ref in pending:
            ray.cancel(ref)  # KeyboardInterrupt in the task: the build removes its staging folder
        if pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=GRACE_S)
        for ref in pending:
            ray.cancel(ref, force=True)  # still running after the grace: its worker is killed
        if pending:  # a force-cancel is asynchronous: let the kills land before staging is removed
            ray.wait(pending, num_returns=len(pending), timeout=GRACE_S)
        for ref, (job, started, attempts, *_) in running.items():
            if started is None and not _first_attempt(attempts):
                queue.append(job)  # still in Ray's queue when cancelled: it never started
                continue
            self._collect(job, ref, started or time.perf_counter(), attempts, interrupted=True)
            on_end(job)
        for job in queue:
            job.result.update(status="interrupted", error="not started: the batch was interrupted")

    def _collect(self, job, ref, started, attempts: Path, interrupted: bool = False) -> None:
        ray = self.ray
        marks = sorted(attempts.iterdir(), key=_mtime)  # one per attempt, named <worker pid>-<hex>
        tries = [p.read_text() for p in marks]
        try:
            job.result.update(ray.get(ref, timeout=0 if interrupted else None))
        except (ray.exceptions.TaskCancelledError, ray.exceptions.GetTimeoutError):
            job.result.update(status="interrupted", error="interrupted; its partial output was removed")
        except ray.exceptions.RayTaskError as e:
            # The task raised: what no `except Exception` in the job body catches (a BaseException
            # of a family's), or a failure outside it. It ran, and its worker lived; Ray does not retry it.
            # ray.get raises it as a subclass of the cause's class too, whose str is Ray's traceback.
            cause, remote = getattr(e, "cause", None), _ANSI.sub("", str(e))
            what = f"{type(cause).__name__}: {cause}" if isinstance(cause, BaseException) else remote
            job.result.update(
                status="interrupted" if interrupted else "failed",
                error=(what.strip().splitlines() or [type(e).__name__])[0],
                traceback=remote,
            )
        except ray.exceptions.RayError as e:  # workers or nodes died more often than we retry
            workers = [f"{node} pid {mark.name.split('-')[0]}" for node, mark in zip(tries, marks)]
            job.result.update(
                status="interrupted" if interrupted else "failed",
                error=f"its worker died {len(tries)} time(s) ({type(e).__name__}), on "
                f"{', '.join(workers) or 'an unknown node'}; no output was published; each worker's stderr "
                f"(a crash's stack) is {_log_folder(ray)}/worker-*-<pid>.err on its node",
            )
        if interrupted and job.result.get("status") == "built":
            pass  # it published before the cancel arrived: a complete output, reported as built
        if tries:
            job.result.setdefault("node", tries[-1])
        job.result["attempts"] = len(tries)
        if len(tries) > 1:
            job.result["attempt_nodes"] = tries
        job.result["memory_request_bytes"] = job.memory_bytes
        job.result["seconds"] = time.perf_counter() - started
        remove_staging(Path(job.options.output))  # the job is over for good: no attempt of it is left

    def close(self) -> None:
        if self.run_folder is not None:
            shutil.rmtree(self.run_folder, ignore_errors=True)
            if self._run_folder_held is not None:
                self._run_folder_held.close()
        if self.started_here:
            self.ray.shutdown()
