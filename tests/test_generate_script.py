"""scripts/generate.py on the mistakes a user makes: one line naming the input and what to do, exit 2.

The cuda and dml cases rely on the installed onnxruntime-genai lacking CUDA and DirectML
(the CPU wheel, as here and in CI); with those runtimes present they skip. The webgpu
case is tests/test_webgpu.py::test_generate_without_a_webgpu_runtime_says_what_to_install.
The last test is scripts/gpu_busy.py's Ctrl-C, on the same folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "generate.py"


def generate(folder, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(folder), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )


def assert_refused(child: subprocess.CompletedProcess, *names: str) -> str:
    """Exit 2, no traceback, and a last stderr line that names each of `names`."""
    assert child.returncode == 2, child.stderr
    assert "Traceback" not in child.stderr, child.stderr
    last = child.stderr.strip().splitlines()[-1]
    for name in names:
        assert name in last, child.stderr
    return last


def _genai_has(pattern: str) -> bool:
    og = pytest.importorskip("onnxruntime_genai")
    return any(Path(og.__file__).parent.glob(pattern))


@pytest.fixture(scope="module")
def cpu_folder(built):
    return built("qwen3", precision="int4").output


def test_cuda_folder_without_cuda_runtime_says_what_to_install(built):
    if _genai_has("*onnxruntime-genai-cuda*"):
        pytest.skip("onnxruntime-genai here has its CUDA library; the missing-runtime message cannot show")
    folder = built("qwen3", precision="int4", ep="cuda").output
    line = assert_refused(generate(folder), str(folder), "-e cuda", "pip install onnxruntime-genai-cuda", "-e cpu")
    assert line.startswith("error: ") and "GPU" in line


def test_dml_folder_without_directml_runtime_says_what_to_install(built):
    if _genai_has("*DirectML*"):
        pytest.skip("onnxruntime-genai here has DirectML; the missing-runtime message cannot show")
    folder = built("qwen3", precision="int4", ep="dml").output
    line = assert_refused(generate(folder), str(folder), "-e dml", "pip install onnxruntime-genai-directml", "Windows")
    assert "-e cpu" in line


def test_provider_override_without_its_runtime_names_the_option(cpu_folder):
    if _genai_has("*onnxruntime-genai-cuda*"):
        pytest.skip("onnxruntime-genai here has its CUDA library; the missing-runtime message cannot show")
    assert_refused(generate(cpu_folder, "--provider", "cuda"), "--provider cuda", "pip install onnxruntime-genai-cuda")


def test_unknown_provider_lists_the_valid_names(cpu_folder):
    assert_refused(generate(cpu_folder, "--provider", "gpu"), "--provider", "'gpu'", "'cpu'", "'webgpu'")


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_max_new_tokens_must_be_a_positive_number(cpu_folder, value):
    assert_refused(generate(cpu_folder, "--max-new-tokens", value), "--max-new-tokens", value)


def test_max_new_tokens_past_the_context_names_the_limit(cpu_folder):
    context = json.loads((cpu_folder / "genai_config.json").read_text())["model"]["context_length"]
    line = assert_refused(generate(cpu_folder, "--max-new-tokens", "100000"), "--max-new-tokens 100000", str(context))
    assert "context_length" in line and "or less" in line


def test_max_new_tokens_up_to_the_limit_generates(cpu_folder):
    """The limit the refusal names is one that runs: prompt tokens plus new tokens = context_length."""
    context = json.loads((cpu_folder / "genai_config.json").read_text())["model"]["context_length"]
    refusal = generate(cpu_folder, "--max-new-tokens", str(context))
    allowed = int(refusal.stderr.split("pass --max-new-tokens ")[1].split()[0])
    child = generate(cpu_folder, "--max-new-tokens", str(allowed))
    assert child.returncode == 0, child.stderr
    assert "new tokens:" in child.stdout


def test_prompt_longer_than_the_context_says_so(cpu_folder):
    assert_refused(generate(cpu_folder, "--prompt", "a b " * 300), "--prompt", "context_length")


def test_empty_prompt_is_refused(cpu_folder):
    assert_refused(generate(cpu_folder, "--prompt", ""), "--prompt", "empty")


def test_malformed_genai_config_names_the_file(tmp_path):
    (tmp_path / "genai_config.json").write_text('{"model": ')
    line = assert_refused(generate(tmp_path), str(tmp_path / "genai_config.json"), "JSON", "rebuild")
    assert len(line) < 300


def test_transformers_js_folder_points_to_the_node_script(built):
    folder = built("qwen3", precision="int4", io_dtype="fp32", format="transformers.js").output
    assert (REPO / "examples" / "web" / "generate.mjs").is_file()
    assert_refused(generate(folder), str(folder), "--format transformers.js", "examples/web/generate.mjs")


def test_missing_folder_and_folder_without_config(tmp_path):
    assert_refused(generate(tmp_path / "nope"), str(tmp_path / "nope"), "not a folder")
    assert_refused(generate(tmp_path), str(tmp_path), "no genai_config.json", "python -m builder")


def test_gpu_busy_stops_its_sampler_on_ctrl_c(cpu_folder, tmp_path):
    """scripts/gpu_busy.py left its NVML sampler thread running after Ctrl-C, and the
    interpreter waited for it at exit. NVML is a stand-in here that marks its first sample."""
    import signal
    import time

    (tmp_path / "pynvml.py").write_text(
        "import os, types\n"
        "def nvmlInit(): pass\n"
        "def nvmlDeviceGetHandleByIndex(i): return None\n"
        "def nvmlDeviceGetUtilizationRates(h):\n"
        "    open(os.environ['SAMPLING_MARK'], 'w').close()\n"
        "    return types.SimpleNamespace(gpu=0)\n"
    )
    mark = tmp_path / "sampling"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "gpu_busy.py"), f"a={cpu_folder}", "--prompt", "8", "--new", "100000"],
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}", "SAMPLING_MARK": str(mark)},
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not mark.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "it never sampled"
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("gpu_busy.py still ran 30 s after Ctrl-C")
    assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr.read()
