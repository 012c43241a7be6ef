import signal
import sys

_interrupted: list[int] = []


def _on_interrupt(signum, frame):
    _interrupted.append(signum)


# A Ctrl-C while Python imports the builder is only noted here, and honoured once the imports are
# done (~0.2 s). Raised as KeyboardInterrupt it could land inside a C extension's initialisation:
# onnx's runs Python's enum code, and one raised there aborted the process ("Fatal Python error:
# Aborted", SIGABRT, or SIGSEGV) or ended it by SIGINT after 'error: interrupted'; CPython drops one
# that lands in an import lock's weakref callback ("Exception ignored in: <function
# _get_module_lock.<locals>.cb>") and the build ran on to exit 0.
_default = signal.getsignal(signal.SIGINT) is signal.default_int_handler
if _default:
    signal.signal(signal.SIGINT, _on_interrupt)
try:
    from builder import interruptible, output_dir  # noqa: F401 (program() imports them, without this handler)
    from builder.cli import program
except KeyboardInterrupt:  # a Ctrl-C that a handler set elsewhere raised
    _interrupted.append(signal.SIGINT)
if _interrupted:
    sys.stderr.write("error: interrupted\n")
    sys.exit(130)
if _default:
    signal.signal(signal.SIGINT, signal.default_int_handler)

sys.exit(program())
