"""A local server for the browser page: no CDN, no hub.

    python examples/web/serve.py OUT_DIR [OUT_DIR ...] [--port 8000]

then open http://127.0.0.1:8000/?model=NAME (NAME: an OUT_DIR's folder name).

It serves this folder (index.html, main.js and node_modules/, where
`npm install --ignore-scripts` put transformers.js and onnxruntime-web), each
OUT_DIR under /models/NAME/, the list of them at /models.json (the page names
the served models and their dtypes from it), and takes a POST of the page's
result at /result (the tests read the generated tokens from there). It listens
on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import errno
import json
import queue
import re
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

HERE = Path(__file__).resolve().parent
BUILD = "python -m builder -m CHECKPOINT --format transformers.js -o OUT"

# transformers.js 4 (src/utils/dtypes.js DEFAULT_DTYPE_SUFFIX_MAPPING): file suffix -> dtype.
SUFFIX_DTYPES = {
    "": "fp32",
    "_fp16": "fp16",
    "_int8": "int8",
    "_uint8": "uint8",
    "_quantized": "q8",
    "_q4": "q4",
    "_q2": "q2",
    "_q1": "q1",
    "_q4f16": "q4f16",
    "_q2f16": "q2f16",
    "_q1f16": "q1f16",
    "_bnb4": "bnb4",
}
DTYPE_SUFFIXES = {dtype: suffix for suffix, dtype in SUFFIX_DTYPES.items()}
_MODEL_FILE = re.compile(r"^model(_[a-z0-9]+)?\.onnx$")


class FolderError(Exception):
    """A folder that the page could not run; the message names it and what to do."""


def weights(folder: Path) -> dict[str, str]:
    """dtype -> onnx/ file for each model*.onnx in folder/onnx that transformers.js can load."""
    found = {}
    onnx = folder / "onnx"
    for path in sorted(onnx.iterdir()) if onnx.is_dir() else []:
        match = _MODEL_FILE.match(path.name)
        if match and (match.group(1) or "") in SUFFIX_DTYPES:
            found[SUFFIX_DTYPES[match.group(1) or ""]] = f"onnx/{path.name}"
    return found


def rebuild(folder: Path, shown: str) -> str:
    """The command that builds `folder` again, from its build_report.json where it has one (its
    checkpoint, precision and EP: the page's and generate.mjs's hints say the same), else BUILD."""
    try:
        report = json.loads((folder / "build_report.json").read_text(encoding="utf-8"))
        options, resolved = report.get("options") or {}, (report.get("checkpoint") or {}).get("path")
    except (OSError, ValueError, AttributeError):
        return f"{BUILD} --overwrite"
    model = resolved or options.get("model")
    if not isinstance(model, str) or not all(isinstance(options.get(k), str) for k in ("precision", "ep")):
        return f"{BUILD} --overwrite"
    family = f" --family {options['family']}" if isinstance(options.get("family"), str) else ""
    # The options that change which weights it writes, as the page's rebuild() keeps them: without
    # --io-dtype fp32 an int4 webgpu folder comes back as q4f16, which the q4 folder was built to avoid.
    io = options.get("io_dtype")
    more = f" --io-dtype {io}" if isinstance(io, str) and io != "auto" else ""
    for key in ("int8_layers", "float_layers"):
        layers = options.get(key)
        if isinstance(layers, list) and layers:
            more += f" --{key.replace('_', '-')} {','.join(map(str, layers))}"
    return (
        f"python -m builder -m {model} -p {options['precision']} -e {options['ep']}{family}{more} "
        f"--format transformers.js -o {shown} --overwrite (build_report.json lists its other options)"
    )


def is_build(folder: Path) -> bool:
    """Whether folder's config.json has a transformers.js_config entry, as check_folder asks first."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(config, dict) and isinstance(config.get("transformers.js_config"), dict)


def check_folder(folder: Path, shown: str | None = None) -> dict:
    """The transformers.js_config of a --format transformers.js folder; FolderError for anything else."""
    shown = shown or str(folder)
    if not folder.exists():
        raise FolderError(f"{shown} does not exist; pass a folder built with {BUILD}")
    if not folder.is_dir():
        raise FolderError(f"{shown} is not a folder; pass a folder built with {BUILD}")
    config_path = folder / "config.json"
    config = None
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise FolderError(
                f"{config_path} is not valid JSON ({first}); rebuild the folder with {BUILD} --overwrite"
            ) from None
    built = config.get("transformers.js_config") if isinstance(config, dict) else None
    if not isinstance(built, dict):
        if (folder / "genai_config.json").is_file():
            raise FolderError(
                f"{shown} is an onnxruntime-genai folder, not a transformers.js build: run it with "
                f"python scripts/generate.py {shown}, or build one for the page with {BUILD}"
            )
        checkpoint = any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))
        if config is not None and checkpoint:
            raise FolderError(
                f"{shown} is a Hugging Face checkpoint, not a transformers.js build: build one with "
                f"python -m builder -m {shown} --format transformers.js -o OUT, then serve OUT"
            )
        if config is None and folder.name == "onnx" and is_build(folder.parent):
            raise FolderError(
                f"{shown} is the onnx/ folder of a transformers.js build: serve the build, {folder.parent}"
            )
        try:
            inside = [child for child in sorted(folder.iterdir()) if child.is_dir() and is_build(child)]
        except OSError:
            inside = []
        if config is None and inside:  # a batch's output root, or out/: the builds are one level down
            named = " ".join(str(Path(shown) / child.name) for child in inside[:4])
            more = f" ... ({len(inside)} builds)" if len(inside) > 4 else ""
            raise FolderError(
                f"{shown} is no transformers.js build but holds some: serve the builds themselves, "
                f"python examples/web/serve.py {named}{more}"
            )
        raise FolderError(
            f'{shown} is not a transformers.js build (no config.json with a "transformers.js_config" entry); '
            f"build one with {BUILD}, then serve OUT"
        )
    held = weights(folder)
    if not held:
        raise FolderError(f"{shown} has no onnx/model*.onnx; rebuild it with {rebuild(folder, shown)}")
    dtype = built.get("dtype")
    if isinstance(dtype, str) and dtype not in held:
        expected = f"onnx/model{DTYPE_SUFFIXES.get(dtype, '_' + dtype)}.onnx"
        raise FolderError(
            f"{shown} has no {expected}, the {dtype} weights its config.json names (it holds "
            f"{', '.join(held)}); rebuild it with {rebuild(folder, shown)}"
        )
    empty = [name for name in held.values() if (folder / name).stat().st_size == 0]
    if empty:  # served, it failed only in the page
        raise FolderError(f"{shown}/{empty[0]} is empty; rebuild it with {rebuild(folder, shown)}")
    return built


def url_names(model_dirs: list[Path]) -> dict[str, Path]:
    """URL name -> folder. Each folder is served under its own name; of folders that share a
    name (a/tiny b/tiny), the first keeps it and the next get NAME-2, NAME-3, ... (a name no
    folder has). The same folder given twice is served once."""
    folders = list(dict.fromkeys(Path(d).resolve() for d in model_dirs))
    taken = {f.name for f in folders}
    names: dict[str, Path] = {}
    for folder in folders:
        name, k = folder.name, 2
        while name in names:
            while f"{folder.name}-{k}" in taken:
                k += 1
            name = f"{folder.name}-{k}"
            taken.add(name)
        names[name] = folder
    return names


def listing(models: dict[str, Path]) -> dict:
    """What /models.json says: each served name, its folder, its config's dtype and the dtypes it holds."""
    served = {}
    for name, folder in models.items():
        try:
            dtype = check_folder(folder).get("dtype")
        except FolderError:
            dtype = None
        held = weights(folder) if folder.is_dir() else {}
        served[name] = {"folder": str(folder), "dtype": dtype, "dtypes": list(held), "files": list(held.values())}
    return {"models": served}


class Handler(SimpleHTTPRequestHandler):
    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".js": "text/javascript",
        ".wasm": "application/wasm",
        ".json": "application/json",
    }

    def __init__(
        self, *args, models: dict[str, Path], results: queue.Queue, quiet: bool, hosts: frozenset[str], **kwargs
    ):
        self.models, self.results, self.quiet, self.hosts = models, results, quiet, hosts
        super().__init__(*args, directory=str(HERE), **kwargs)

    def parse_request(self) -> bool:
        """Answer only requests addressed to this machine by name: a web page whose own domain resolves
        to 127.0.0.1 (DNS rebinding) could otherwise read /models.json, with the folders' paths, and
        every file served, from any site the user visits while this runs."""
        if not super().parse_request():
            return False
        host = self.headers.get("Host")
        if host is None or _host_name(host) in self.hosts:
            return True  # no Host: no browser sent it
        self.send_error(
            403,
            f"this server answers requests for {', '.join(sorted(self.hosts))}; serve.py --allow-host NAME adds NAME",
        )
        return False

    def translate_path(self, path: str) -> str:
        parts = unquote(urlsplit(path).path).split("/")
        if len(parts) > 3 and parts[1] == "models" and parts[2] in self.models:
            folder, rest = self.models[parts[2]], parts[3:]
            # A path that climbs out of the model folder gets a 404, not a file. Checked on the URL's
            # own components, not on the resolved file: a Hugging Face cache snapshot (hf download)
            # is a folder of symlinks into ../../blobs, and its files are the model's all the same.
            # Hidden files are none of the model's (transformers.js asks for none), and may be secret: a
            # git clone's .git/config can hold a token in its URL.
            if any(p.startswith(".") or "\\" in p or ":" in p or Path(p).is_absolute() for p in rest):
                return str(folder / "__missing__")
            return str(folder.joinpath(*rest))
        return super().translate_path(path)

    def end_headers(self):
        # Cross-origin isolation lets onnxruntime-web use wasm threads (SharedArrayBuffer).
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def do_GET(self):
        if urlsplit(self.path).path == "/models.json":
            body = json.dumps(listing(self.models)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def send_head(self):
        # open() raises on a NUL byte (ValueError, not the OSError the stdlib answers with a 404):
        # the connection dropped with a traceback. No file has one in its name.
        if "\x00" in unquote(urlsplit(self.path).path):
            self.send_error(400, "the path holds a NUL byte")
            return None
        return super().send_head()

    def do_POST(self):
        if urlsplit(self.path).path != "/result":
            self.send_error(404)
            return
        try:
            length = int(self.headers.get("Content-Length", 0))
        except ValueError:
            length = -1
        if length < 0:
            self.send_error(400, "Content-Length is not a byte count")
            return
        try:
            result = json.loads(self.rfile.read(length))
        except ValueError:
            self.send_error(400, "body is not JSON")
            return
        if not isinstance(result, dict):
            self.send_error(400, "body is not a JSON object")
            return
        self.results.put(result)
        if not self.quiet:
            print(json.dumps({k: v for k, v in result.items() if k != "logs"}), flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format, *args):
        if not self.quiet:
            super().log_message(format, *args)


class Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """A browser that stops a download (a reload, a closed tab while the weights load) resets the
        connection mid-file: nothing went wrong here, so no traceback. Anything else is still printed."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _host_name(host: str) -> str:
    """The name in a Host header, without its port: 127.0.0.1:8000 -> 127.0.0.1, [::1]:8000 -> ::1."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def start(model_dirs: list[Path], port: int = 0, quiet: bool = True, allow_hosts: tuple[str, ...] = ()):
    """Serve in a background thread; returns (server, results queue). port 0: any free port.
    server.models maps each URL name to its folder (see url_names). Requests whose Host names another
    machine than this one, or than allow_hosts, get a 403."""
    models = url_names(model_dirs)
    results: queue.Queue = queue.Queue()
    hosts = LOCAL_HOSTS | {_host_name(h) for h in allow_hosts}
    server = Server(("127.0.0.1", port), partial(Handler, models=models, results=results, quiet=quiet, hosts=hosts))
    server.models = models
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, results


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port number: pass 1 to 65535, or 0 for any free port")
    return value


class Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line, `serve.py: error: ...`, exit 2 (the usage only when no argument was given)."""
        if len(sys.argv) <= 1:
            self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def main() -> None:
    parser = Parser(
        description=__doc__.split("\n\n")[0],
        epilog="Each OUT_DIR is served as /models/NAME/, NAME its folder name. Folders that share a name "
        "(a/tiny b/tiny) get distinct ones: the first keeps it, the next are NAME-2, NAME-3, ...; "
        "the printed addresses say which folder each serves. /models.json lists them.",
    )
    parser.add_argument("models", nargs="+", type=Path, metavar="OUT_DIR", help=f"folders built with {BUILD}")
    parser.add_argument(
        "--port", type=port_number, default=8000, help="port on 127.0.0.1 (default 8000; 0: any free port)"
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="answer requests addressed to NAME too (a forwarded port's or a proxy's host name); by default only "
        "127.0.0.1, localhost and [::1], so that a web page cannot reach the server through a domain of its own",
    )
    args = parser.parse_args()
    for d in args.models:
        try:
            check_folder(d)
        except FolderError as e:
            parser.error(str(e))
    if not (HERE / "node_modules" / "@huggingface" / "transformers").is_dir():
        parser.error(
            f"{HERE}/node_modules lacks @huggingface/transformers: run `npm install --ignore-scripts` in {HERE}"
        )
    try:
        server, _ = start(args.models, args.port, quiet=False, allow_hosts=tuple(args.allow_host))
    except OSError as e:
        where = f"127.0.0.1:{args.port}"
        if e.errno == errno.EADDRINUSE:
            parser.error(
                f"port {args.port} is taken (something already listens on {where}); pass --port N for another "
                f"one, e.g. --port {args.port + 1 if args.port < 65535 else 8000}, or --port 0 for any free port"
            )
        if e.errno == errno.EACCES:
            parser.error(f"port {args.port} needs root; pass --port N with N above 1023")
        parser.error(f"cannot listen on {where} ({e.strerror or e}); pass --port N")
    shown = {d.resolve(): d for d in args.models}
    for name, folder in server.models.items():
        url = f"http://127.0.0.1:{server.server_port}/?model={quote(name)}"
        if name != folder.name:
            first = shown[server.models[folder.name]]
            url += f"  ({shown[folder]}; {folder.name} is {first})"
        print(url, flush=True)
    try:
        threading.Event().wait()
    finally:
        server.shutdown()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C, while serving or checking the folders: 130, as a shell reports it
        sys.exit(130)
