import signal
import sys

_interrupted: list[int] = []


def _on_interrupt(signum, frame):
    _interrupted.append(signum)
    raise KeyboardInterrupt


# CPython drops a KeyboardInterrupt that lands in an import lock's weakref callback ("Exception
# ignored in: <function _get_module_lock.<locals>.cb>"), and the build then ran on to exit 0:
# the handler also records the Ctrl-C, so it is honoured once the imports are done.
_default = signal.getsignal(signal.SIGINT) is signal.default_int_handler
if _default:
    signal.signal(signal.SIGINT, _on_interrupt)
try:
    from builder import output_dir  # noqa: F401 (program() imports it; a Ctrl-C here must be caught)
    from builder.cli import program
except KeyboardInterrupt:  # Ctrl-C while Python was still importing
    _interrupted.append(signal.SIGINT)
if _interrupted:
    sys.stderr.write("error: interrupted\n")
    sys.exit(130)
if _default:
    signal.signal(signal.SIGINT, signal.default_int_handler)

sys.exit(program())
