"""Native calls that Ctrl-C, SIGTERM and SIGHUP may interrupt.

Python runs a signal's handler only between bytecodes, so a call that stays in C++ (onnxruntime
loading a model) holds a Ctrl-C until it returns. Waiting on a thread is interrupted at once: the
call runs in a daemon thread, and an interrupt unwinds the build (its staging folder removed) while
the call is left to end as it may. The process must then end with os._exit: after an onnxruntime
load cut short that way its normal exit aborted ("terminate called without an active exception",
SIGABRT), the thread running or not. So only processes that end that way (cli.program, a batch's
build process) set `threaded`; elsewhere the call runs in the caller's thread, as before.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading

_interrupted: list[threading.Thread] = []
# Set by the processes that end with exit_now after an interrupted call (the command line, a batch's
# build process). Elsewhere (builder.build() in a user's program, which exits as it does) the call
# runs in the caller's thread: one left running made that program's own exit abort.
threaded = False


def interruptible(call, *args, **kwargs):
    """call(*args, **kwargs) in a daemon thread, waited for where a signal's handler can run."""
    if not threaded:
        return call(*args, **kwargs)
    done: dict = {}

    def run():
        try:
            done["value"] = call(*args, **kwargs)
        except BaseException as e:  # raised again in the waiting thread, as if the call had run there
            done["error"] = e

    thread = threading.Thread(target=run, name=getattr(call, "__name__", "call"), daemon=True)
    thread.start()
    try:
        thread.join()
    except BaseException:
        _interrupted.append(thread)
        raise
    if "error" in done:
        raise done["error"]
    return done["value"]


def calls_interrupted() -> bool:
    return bool(_interrupted)


def exit_now(code: int):
    """End the process with `code`, skipping the exit that aborts after an interrupted call."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextlib.contextmanager
def stop_signals_held():
    """Note the stop signals that come in the block, and deliver them to their handlers once it ends.

    For imports of C extensions: a signal's Python handler runs wherever the interpreter next checks
    for one, which may be Python code that a C extension's initialisation calls (onnx's runs Python's
    enum code). A KeyboardInterrupt raised there aborted the process ("Fatal Python error: Aborted")
    rather than unwinding. Only Python handlers are held (SIG_DFL and SIG_IGN act in C), and only in
    the main thread, the one Python runs handlers in."""
    caught: list[int] = []
    held = {}
    if threading.current_thread() is threading.main_thread():
        for sig in _STOP_SIGNALS:
            if callable(signal.getsignal(sig)):
                held[sig] = signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(caught):
            signal.raise_signal(sig)  # its handler runs here, as if it had come now


def import_native(name: str):
    """importlib.import_module(name), for the packages of C extensions that the builder imports
    mid-build (onnxruntime, onnxruntime_genai, the WebGPU plugin EP). A Ctrl-C that lands while one
    initialises comes out of the import as ImportError('initialization failed'), caused by the
    KeyboardInterrupt: a build stopped that way ended in that traceback and exit 1, and a caller that
    takes an ImportError for 'not installed' would have said to install it. A stop signal is held
    until the import is done; one that still comes out that way (a handler that no hold reached) is
    raised as the KeyboardInterrupt it was."""
    try:
        with stop_signals_held():
            return importlib.import_module(name)
    except ImportError as e:
        if isinstance(e.__cause__, KeyboardInterrupt) or isinstance(e.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        raise
