"""Ctrl-C and SIGTERM stop a command: the signal's exception is raised where it arrives and, in case that
place swallows it, again at the next place that asks (`raise_pending`: every training batch, before a staged
folder replaces the old one, and when the command ends).

Under JAX a signal mostly arrives while NumPy copies a JAX array to the host (Keras' logs, each batch),
and that C++ path drops the exception: 4 SIGTERMs of 5 were lost there, and the run trained on until killed.
It can also arrive inside a garbage-collector callback (JAX registers one), where Python prints the
exception as "ignored" and goes on: that print is left out, since the stop is still to come.
"""

import signal
import sys


class Terminated(KeyboardInterrupt):
    """SIGTERM, stopped as Ctrl-C is."""


_pending = None  # the exception of a signal that arrived and has not stopped the command yet


def _raiser(exception):
    def handle(signum, frame):
        global _pending
        _pending = exception
        raise exception()

    return handle


def _unraisable(previous):
    def hook(unraisable):
        if _pending is not None and unraisable.exc_type is _pending:
            return  # our stop, swallowed where it arrived: raised again at the next `raise_pending`
        previous(unraisable)

    return hook


def install():
    """Our SIGTERM handler, and our Ctrl-C handler where Ctrl-C is not ignored (a background job); returns the
    handlers they replaced (to put back: `main()` is also called in-process), {} off the main thread."""
    global _pending
    _pending = None
    try:
        replaced = {signal.SIGTERM: signal.signal(signal.SIGTERM, _raiser(Terminated))}
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            replaced[signal.SIGINT] = signal.signal(signal.SIGINT, _raiser(KeyboardInterrupt))
        else:
            replaced[signal.SIGINT] = signal.getsignal(signal.SIGINT)  # a second Ctrl-C changes it: put it back too
    except ValueError:  # not the main thread: signals are not ours to handle
        return {}
    replaced["unraisablehook"] = sys.unraisablehook
    sys.unraisablehook = _unraisable(sys.unraisablehook)
    return replaced


def stopped():
    """The command stopped for its signal: nothing is pending any more."""
    global _pending
    _pending = None


def raise_pending():
    """Raise the stop a signal asked for, if it has not stopped the command yet."""
    if _pending is not None:
        raise _pending()


def restore(handlers):
    stopped()
    handlers = dict(handlers)
    if "unraisablehook" in handlers:
        sys.unraisablehook = handlers.pop("unraisablehook")
    for signum, handler in handlers.items():
        if handler is not None:
            signal.signal(signum, handler)
