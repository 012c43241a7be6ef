"""A local server for the browser page: no CDN, no hub.

    python examples/web/serve.py OUT_DIR [OUT_DIR ...] [--port 8000]

then open http://127.0.0.1:8000/?model=NAME (NAME: an OUT_DIR's folder name).

It serves this folder (index.html, main.js and node_modules/, where
`npm install --ignore-scripts` put transformers.js and onnxruntime-web), each
OUT_DIR under /models/NAME/, and takes a POST of the page's result at /result
(the tests read the generated tokens from there). It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import queue
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

HERE = Path(__file__).resolve().parent


class Handler(SimpleHTTPRequestHandler):
    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".js": "text/javascript",
        ".wasm": "application/wasm",
        ".json": "application/json",
    }

    def __init__(self, *args, models: dict[str, Path], results: queue.Queue, quiet: bool, **kwargs):
        self.models, self.results, self.quiet = models, results, quiet
        super().__init__(*args, directory=str(HERE), **kwargs)

    def translate_path(self, path: str) -> str:
        parts = unquote(urlsplit(path).path).split("/")
        if len(parts) > 3 and parts[1] == "models" and parts[2] in self.models:
            folder = self.models[parts[2]].resolve()
            target = folder.joinpath(*parts[3:]).resolve()
            # A path that climbs out of the model folder gets a 404, not a file.
            return str(target) if target.is_relative_to(folder) else str(folder / "__missing__")
        return super().translate_path(path)

    def end_headers(self):
        # Cross-origin isolation lets onnxruntime-web use wasm threads (SharedArrayBuffer).
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def do_POST(self):
        if urlsplit(self.path).path != "/result":
            self.send_error(404)
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            result = json.loads(body)
        except ValueError:
            self.send_error(400, "body is not JSON")
            return
        self.results.put(result)
        if not self.quiet:
            print(json.dumps({k: v for k, v in result.items() if k != "logs"}), flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format, *args):
        if not self.quiet:
            super().log_message(format, *args)


def start(model_dirs: list[Path], port: int = 0, quiet: bool = True):
    """Serve in a background thread; returns (server, results queue). port 0: any free port."""
    models = {Path(d).resolve().name: Path(d).resolve() for d in model_dirs}
    results: queue.Queue = queue.Queue()
    server = ThreadingHTTPServer(("127.0.0.1", port), partial(Handler, models=models, results=results, quiet=quiet))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="folders built with --format transformers.js")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    for d in args.models:
        if not (d / "config.json").is_file():
            parser.error(f"{d} has no config.json; build it with --format transformers.js")
    if not (HERE / "node_modules" / "@huggingface" / "transformers").is_dir():
        parser.error(
            f"{HERE}/node_modules lacks @huggingface/transformers: run `npm install --ignore-scripts` in {HERE}"
        )
    server, _ = start(args.models, args.port, quiet=False)
    for d in args.models:
        print(f"http://127.0.0.1:{server.server_port}/?model={d.resolve().name}")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    main()
