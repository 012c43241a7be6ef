"""examples/web/serve.py and the page (main.js) on the mistakes a user makes.

serve.py: a folder that does not exist, is a Hugging Face checkpoint or otherwise not a
transformers.js build, a bad or taken --port: one `serve.py: error: ...` line naming the
input and the fix, exit 2, no traceback. Folders that share a name get distinct URL names.
The page: a bad address shows one `error: ` line naming the parameter and the fix (one
headless Chromium launch; the folders are stand-ins, the page refuses before it loads weights).
"""

from __future__ import annotations

import html
import json
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from tempfile import TemporaryDirectory

import pytest

from support.synthetic import TOKENIZER_DIR

ROOT = Path(__file__).resolve().parents[1]
SERVE = ROOT / "examples" / "web" / "serve.py"
BUILD = "--format transformers.js -o OUT"


def fake_build(folder: Path, dtype: str = "q4", **config) -> Path:
    """A stand-in for a --format transformers.js folder: what serve.py and the page read before loading."""
    (folder / "onnx").mkdir(parents=True)
    suffix = {"fp32": "", "q4": "_q4", "q4f16": "_q4f16"}[dtype]
    (folder / "onnx" / f"model{suffix}.onnx").write_bytes(b"not a real graph: serve.py does not parse it")
    body = {"model_type": "qwen3", "vocab_size": 480, "max_position_embeddings": 256, **config}
    body["transformers.js_config"] = {"dtype": dtype, "use_external_data_format": {f"model{suffix}.onnx": 1}}
    (folder / "config.json").write_text(json.dumps(body))
    return folder


def serve(*args, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SERVE), *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def assert_refused(child: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2, nothing on stdout, one stderr line `serve.py: error: ...` holding each of `words`."""
    assert child.returncode == 2, child.stderr
    assert "Traceback" not in child.stderr, child.stderr
    lines = child.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("serve.py: error: "), child.stderr
    assert child.stdout == ""
    for word in words:
        assert word in lines[0], child.stderr
    return lines[0]


def test_missing_folder_does_not_exist(tmp_path):
    assert_refused(serve(tmp_path / "nope"), f"{tmp_path / 'nope'} does not exist", BUILD)


def test_checkpoint_is_not_a_build():
    """A Hugging Face checkpoint (config.json without transformers.js_config): the command that builds one."""
    checkpoint = ROOT / "examples" / "tiny-qwen3"
    line = assert_refused(serve(checkpoint), "is a Hugging Face checkpoint, not a transformers.js build")
    assert f"python -m builder -m {checkpoint} --format transformers.js -o OUT" in line


@pytest.mark.parametrize(
    "files,words",
    [
        (
            {"config.json": '{"model_type": "qwen3"}'},
            ['is not a transformers.js build (no config.json with a "transformers.js_config"', BUILD],
        ),
        ({"config.json": "{", "genai_config.json": "{}"}, ["config.json is not valid JSON", "--overwrite"]),
        (
            {"config.json": "{}", "genai_config.json": "{}"},
            ["is an onnxruntime-genai folder", "scripts/generate.py", BUILD],
        ),
    ],
)
def test_other_folders_are_not_builds(tmp_path, files, words):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert_refused(serve(tmp_path), str(tmp_path), *words)


def test_a_folder_of_builds_names_them(tmp_path):
    """A batch's output root (or out/) holds the builds one level down: serve.py names them rather
    than saying to build one; the onnx/ folder inside a build names the build."""
    root = tmp_path / "batch"
    for name in ("tiny-fp32", "tiny-q4"):
        fake_build(root / name)
    (root / "web-summary.json").write_text("{}")
    (root / "notes").mkdir()
    line = assert_refused(serve(root), f"{root} is no transformers.js build but holds some")
    assert line.endswith(f"python examples/web/serve.py {root / 'tiny-fp32'} {root / 'tiny-q4'}"), line
    assert_refused(
        serve(root / "tiny-q4" / "onnx"), "is the onnx/ folder of a transformers.js build", f"build, {root / 'tiny-q4'}"
    )


def test_missing_weights_are_named(tmp_path):
    folder = fake_build(tmp_path / "tiny")
    (folder / "onnx" / "model_q4.onnx").unlink()
    (folder / "onnx" / "model.onnx").write_bytes(b"")
    assert_refused(
        serve(folder), "has no onnx/model_q4.onnx, the q4 weights its config.json names", "fp32", "--overwrite"
    )


def test_empty_weights_are_named(tmp_path):
    """Served, the page failed to load it. The rebuild is the folder's own, from its report (it
    was the generic -m CHECKPOINT, without the precision and EP)."""
    folder = fake_build(tmp_path / "tiny")
    (folder / "onnx" / "model_q4.onnx").write_bytes(b"")
    assert_refused(serve(folder), "onnx/model_q4.onnx is empty", "-m CHECKPOINT", "--overwrite")
    report = {"options": {"model": "ck", "precision": "int4", "ep": "webgpu"}, "checkpoint": {"path": "/data/ck"}}
    (folder / "build_report.json").write_text(json.dumps(report))
    assert_refused(serve(folder), "rebuild it with python -m builder -m /data/ck -p int4 -e webgpu --format")


def test_the_rebuild_keeps_the_options_that_choose_the_weights():
    """An int4 webgpu folder built with --io-dtype fp32 holds q4; the rebuild dropped it, and wrote q4f16."""
    from test_transformers_js import load_serve

    options = {"model": "ck", "precision": "int4", "ep": "webgpu", "io_dtype": "fp32", "int8_layers": ["lm_head"]}
    options["float_layers"] = ["model.embed_tokens", "model.norm"]
    report = {"options": options, "checkpoint": {"path": "/data/ck"}}
    with TemporaryDirectory() as folder:
        (Path(folder) / "build_report.json").write_text(json.dumps(report))
        line = load_serve().rebuild(Path(folder), "OUT")
    assert (
        "-m /data/ck -p int4 -e webgpu --io-dtype fp32 --int8-layers lm_head "
        "--float-layers model.embed_tokens,model.norm --format transformers.js -o OUT"
    ) in line, line


@pytest.mark.parametrize("port", ["99999", "abc", "-1"])
def test_bad_port(tmp_path, port):
    line = assert_refused(serve(fake_build(tmp_path / "tiny"), "--port", port), f"{port} is not a port number")
    assert "1 to 65535, or 0 for any free port" in line


def test_taken_port(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = assert_refused(serve(fake_build(tmp_path / "tiny"), "--port", port), f"port {port} is taken")
    assert "pass --port N" in line and "--port 0" in line


def test_help_says_how_shared_names_are_served():
    child = serve("--help")
    assert child.returncode == 0, child.stderr
    assert "NAME-2" in " ".join(child.stdout.split())


def test_folders_that_share_a_name_get_distinct_urls(tmp_path):
    """a/tiny b/tiny: two addresses (tiny, tiny-2), the second naming its folder; /models.json agrees."""
    a, b = fake_build(tmp_path / "a" / "tiny"), fake_build(tmp_path / "b" / "tiny", dtype="q4f16")
    child = subprocess.Popen(
        [sys.executable, str(SERVE), str(a), str(b), str(a), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [child.stdout.readline().strip() for _ in range(2)]
        assert lines[0].startswith("http://127.0.0.1:") and lines[0].endswith("/?model=tiny"), lines
        assert lines[1].split()[0].endswith("/?model=tiny-2") and str(b) in lines[1], lines
        base = lines[0].split("/?")[0]
        served = json.load(urllib.request.urlopen(f"{base}/models.json", timeout=10))["models"]
        assert {n: (s["folder"], s["dtypes"]) for n, s in served.items()} == {
            "tiny": (str(a), ["q4"]),
            "tiny-2": (str(b), ["q4f16"]),
        }
        config = json.load(urllib.request.urlopen(f"{base}/models/tiny-2/config.json", timeout=10))
        assert config["transformers.js_config"]["dtype"] == "q4f16"
    finally:
        child.terminate()
        child.wait(10)
        rest = child.stdout.read()
        child.stdout.close()
        child.stderr.close()
    assert "?model=" not in rest, rest  # the folder given twice is served once


def test_url_names():
    from test_transformers_js import load_serve

    a, b, c = Path("/x/a/tiny"), Path("/x/b/tiny"), Path("/x/c/tiny-2")
    assert load_serve().url_names([a, b, c, a]) == {"tiny": a, "tiny-3": b, "tiny-2": c}


def test_page_names_the_bad_parameter(tmp_path, built):
    """One Chromium launch, a same-origin page of iframes, each a mistaken address: each page
    POSTs one error line naming the parameter and the fix, and loads no weights (but for a -e cuda
    build on wasm, whose load fails)."""
    from test_transformers_js import chromium, load_serve, node_ready

    node_ready()
    # Its int4 embedding has no wasm kernel, nor its GroupQueryAttention with Q/K norms a CPU one: the
    # page said to rebuild it with -e cuda and a float embedding (or, once rebuilt so, that a file of
    # it may be damaged, with the same command).
    cuda = shutil.copytree(
        built("qwen3", precision="int4", ep="cuda", format="transformers.js").output, tmp_path / "cuda"
    )
    q4, other = fake_build(tmp_path / "tiny"), fake_build(tmp_path / "other", dtype="fp32")
    for f in TOKENIZER_DIR.iterdir():  # the page encodes its prompt before it loads the weights
        shutil.copyfile(f, q4 / f.name)
    older = fake_build(tmp_path / "older")  # built before config.json carried the build's context
    (older / "build_report.json").write_text(json.dumps({"model": {"context_length": 16}}))
    short = fake_build(tmp_path / "short", max_position_embeddings=32)  # built with --context-length 32
    cases = {
        "model=typo": ['no model named "typo" is served here; served: tiny, other, older, short, cuda'],
        "model=tiny&dtype=q4f16": [
            "dtype=q4f16: tiny has no q4f16 weights; it holds q4: pass dtype=q4 or leave dtype out",
            "build the q4f16 weights (onnx/model_q4f16.onnx) into another folder with python -m builder -m "
            "CHECKPOINT -p int4 -e webgpu --format transformers.js -o OTHER_DIR",
        ],
        # It said "build the bogus weights into another folder".
        "model=tiny&dtype=bogus": [
            "dtype=bogus is not one of fp32, fp16, q4, q4f16 or int8, the dtypes python -m builder writes; "
            "tiny holds q4: leave dtype out, or pass one of those"
        ],
        # It generated from the textarea's "Hello"; with ids= too, it ran the ids.
        "model=tiny&prompt=%20": ["prompt= is empty: pass the text to continue"],
        "model=tiny&prompt=Hi&ids=1,2": ["pass the prompt as prompt=TEXT or as ids=1,2,3, not both"],
        # The default max_new_tokens (64) is cut to the context; one in the address is still refused.
        "model=short&ids=1,2": ["short does not"],
        "model=short&ids=1,2&max_new_tokens=64": ["max_position_embeddings 32: pass max_new_tokens=31 or less"],
        "model=tiny&ids=1,2&max_new_tokens=300": [
            "max_new_tokens=300 runs past tiny's context: the 2 prompt tokens plus",
            "max_position_embeddings 256: pass max_new_tokens=255 or less",
        ],
        "model=older&ids=1,2&max_new_tokens=20": ["context_length 16: pass max_new_tokens=15 or less"],
        # No prompt in the address: refused before the weights load too (it loaded, then refused on Generate),
        # for the prompt it runs, the box's "Hello" (3 tokens): it said "the 1 prompt token", "pass
        # max_new_tokens=256 or less", and then refused 256.
        "model=tiny&max_new_tokens=300": [
            "runs past tiny's context: the 3 prompt tokens plus",
            "pass max_new_tokens=254 or less",
        ],
        "model=tiny&ids=1,2;;3": ["ids=1,2;;3 is not a comma-separated list", "e.g. ids=1,2,3 or ids=1,2,3;4,5"],
        "model=cuda&device=wasm&ids=1,2&max_new_tokens=2": [
            "cuda does not run on wasm (",
            "it was built for cuda (-e cuda), whose graph onnxruntime-web's CPU build need not run",
            " -p int4 -e webgpu --float-layers model.embed_tokens --format transformers.js -o ",
        ],
    }
    # Headless Chromium opens one address: a page in the served folder frames them.
    frames = "".join(f'<iframe src="/?report=1&amp;{html.escape(q)}"></iframe>' for q in cases)
    # Without report= (or autorun=) the page waits for a prompt to be typed and shows a refusal in its
    # status line only: a script here reads that line and posts it as report= does.
    typed = "model=tiny&max_new_tokens=300"
    cases[f"typed:{typed}"] = ["max_new_tokens=300 runs past tiny's context for any prompt", "256 or less"]
    frames += f"""<iframe id="typed" src="/?{html.escape(typed)}"></iframe><script>
        const poll = setInterval(() => {{
            const line = document.getElementById('typed').contentDocument?.getElementById('status')?.textContent ?? '';
            if (!line.startsWith('error: ')) return;
            clearInterval(poll);
            fetch('/result', {{method: 'POST', headers: {{'Content-Type': 'application/json'}},
                body: JSON.stringify({{query: '?report=1&typed:{typed}', error: line.slice(7)}})}});
        }}, 100);
    </script>"""
    (q4 / "frames.html").write_text(frames)
    server, results = load_serve().start([q4, other, older, short, cuda])
    posted = {}
    with chromium(f"http://127.0.0.1:{server.server_port}/models/tiny/frames.html", tmp_path, server) as next_result:
        for _ in cases:
            result = next_result(results, 60, f"got {posted}")
            posted[result["query"].removeprefix("?report=1&")] = result["error"]
    assert posted.keys() == cases.keys(), posted
    for query, words in cases.items():
        assert "\n" not in posted[query] and "    at " not in posted[query], posted[query]
        for word in words:
            assert word in posted[query], (query, posted[query])
    assert "build the bogus" not in posted["model=tiny&dtype=bogus"]
    assert "max_new_tokens" not in posted["model=short&ids=1,2"]  # it loads (and fails on the stand-in)
    assert "shorten the prompt" not in posted[f"typed:{typed}"]  # there is none yet


def test_a_folder_of_symlinks_is_served(tmp_path):
    """A Hugging Face cache snapshot (hf download) links each file into ../../blobs: served, while a
    path that climbs out of the folder is not."""
    from test_transformers_js import load_serve

    built = fake_build(tmp_path / "built")
    (built / "secret.txt").write_text("outside")
    snapshot = tmp_path / "hub" / "snapshots" / "tiny"
    (snapshot / "onnx").mkdir(parents=True)
    for file in ("config.json", "onnx/model_q4.onnx"):
        (snapshot / file).symlink_to(built / file)
    server, _ = load_serve().start([snapshot])
    base = f"http://127.0.0.1:{server.server_port}/models/tiny"
    try:
        config = json.load(urllib.request.urlopen(f"{base}/config.json", timeout=10))
        assert config["transformers.js_config"]["dtype"] == "q4"
        assert urllib.request.urlopen(f"{base}/onnx/model_q4.onnx", timeout=10).read().startswith(b"not a real")
        for climb in ("../../../built/secret.txt", "%2e%2e/%2e%2e/%2e%2e/built/secret.txt", "onnx/..%2f..%2fx"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"{base}/{climb}", timeout=10)
            assert refused.value.code == 404, climb
    finally:
        server.shutdown()


def reset_mid_download(port: int, path: str) -> None:
    """A client that reads the headers of `path` and then goes away (a reload while the weights load):
    the connection is reset, not closed, as a browser's aborted fetch does."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        assert client.recv(4096).startswith(b"HTTP/1.0 200")
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def wait_for_handlers(timeout: float = 10) -> None:
    """Until serve.py's request threads (ThreadingHTTPServer's, not joined: daemon threads) have ended."""
    deadline = time.monotonic() + timeout
    while any("process_request_thread" in t.name for t in threading.enumerate()):
        assert time.monotonic() < deadline, "a request thread did not end"
        time.sleep(0.05)


def test_hidden_files_of_a_served_folder_are_not_served(tmp_path):
    """A model folder that is a git clone of a hub repository holds .git/config, which may carry a token
    in its URL: served to whoever asked, where the page never asks for a hidden file."""
    from test_transformers_js import load_serve

    built = fake_build(tmp_path / "built")
    (built / ".git").mkdir()
    (built / ".git" / "config").write_text("url = https://user:hf_secret@huggingface.co/org/tiny")
    (built / ".env").write_text("HF_TOKEN=hf_secret")
    server, _ = load_serve().start([built])
    base = f"http://127.0.0.1:{server.server_port}/models/built"
    try:
        assert urllib.request.urlopen(f"{base}/config.json", timeout=10).status == 200
        for hidden in (".git/config", ".env", "%2egit/config", "onnx/../.env"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"{base}/{hidden}", timeout=10)
            assert refused.value.code == 404, hidden
    finally:
        server.shutdown()


def test_a_download_the_browser_stops_prints_no_traceback(tmp_path, capfd):
    """Reloading the page while it loads the weights resets the connection mid-file: serve.py went on
    serving and printed a ConnectionResetError traceback for each file, as if it had failed."""
    from test_transformers_js import load_serve

    built = fake_build(tmp_path / "tiny")
    with open(built / "onnx" / "model_q4.onnx_data", "wb") as data:
        data.truncate(256 << 20)  # sparse: far more than the socket buffers hold
    server, _ = load_serve().start([built])
    try:
        for _ in range(2):
            reset_mid_download(server.server_port, "/models/tiny/onnx/model_q4.onnx_data")
        wait_for_handlers()
        config = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/models/tiny/config.json", timeout=10)
        assert json.load(config)["transformers.js_config"]["dtype"] == "q4"  # still serving
    finally:
        server.shutdown()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "ConnectionResetError" not in err, err


def status(port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> int:
    """The status serve.py answers a raw request with (http.client sends the path as it is)."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest(method, path, skip_host="Host" in (headers or {}), skip_accept_encoding=True)
        for name, value in (headers or {"Content-Length": str(len(body))}).items():
            connection.putheader(name, value)
        connection.endheaders(body)
        return connection.getresponse().status
    finally:
        connection.close()


def test_malformed_requests_get_400_not_a_traceback(tmp_path, capfd):
    """A NUL byte in the path, a POST whose body is no JSON object or whose Content-Length is no
    number: the connection dropped with a traceback on serve.py's terminal (ValueError, AttributeError)."""
    from test_transformers_js import load_serve

    server, results = load_serve().start([fake_build(tmp_path / "tiny")])
    port = server.server_port
    try:
        for method in ("GET", "HEAD"):
            for path in ("/models/tiny/config.json%00.txt", "/index.html%00"):
                assert status(port, method, path) == 400, (method, path)
        for body in (b"[1, 2]", b'"text"', b"not json"):
            assert status(port, "POST", "/result", body) == 400, body
        for length in ("abc", "-1"):
            assert status(port, "POST", "/result", headers={"Content-Length": length}) == 400, length
        assert status(port, "POST", "/result", b'{"tokens": [1]}') == 204  # what the page posts
        assert status(port, "GET", "/models/tiny/config.json") == 200
    finally:
        server.shutdown()
    assert results.get_nowait() == {"tokens": [1]} and results.empty()
    err = capfd.readouterr().err
    assert "Traceback" not in err, err


def test_ctrl_c_stops_it_with_130(tmp_path):
    """Ctrl-C is how a user stops serve.py: exit 130, as for any interrupted command (it exited 0,
    so `serve.py OUT && next` ran on), and no traceback."""
    import signal

    child = subprocess.Popen(
        [sys.executable, str(SERVE), str(fake_build(tmp_path / "tiny")), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a background job's ignored SIGINT
    )
    try:
        assert child.stdout.readline().strip().endswith("/?model=tiny")
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=20)
    finally:
        child.kill()
        child.wait(10)
    assert child.returncode == 130, err
    assert err == "" and out == "", (out, err)


def test_requests_for_another_host_are_refused(tmp_path):
    """A page on any site the user visits can make its own domain resolve to 127.0.0.1 (DNS rebinding)
    and read what serve.py serves, /models.json with the folders' paths included: only requests that
    name this machine, or a name given with --allow-host, are answered."""
    from test_transformers_js import load_serve

    built = fake_build(tmp_path / "built")
    server, results = load_serve().start([built], allow_hosts=("Models.Example",))
    port = server.server_port
    try:
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "[::2]"):
            assert status(port, "GET", "/models.json", headers={"Host": host}) == 403, host
            assert status(port, "GET", "/models/built/config.json", headers={"Host": host}) == 403, host
        post = {"Host": "evil.example", "Content-Type": "text/plain", "Content-Length": "2"}
        assert status(port, "POST", "/result", b"{}", headers=post) == 403 and results.empty()
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST", "models.example:443"):
            assert status(port, "GET", "/models/built/config.json", headers={"Host": host}) == 200, host
    finally:
        server.shutdown()
