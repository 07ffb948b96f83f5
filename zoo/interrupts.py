"""Ctrl-C and SIGTERM stop a command: the signal's exception is raised where it arrives and, in case that
place swallows it, again at the next place that asks (`raise_pending`, every training batch).

Under JAX a signal mostly arrives while NumPy copies a JAX array to the host (Keras' logs, each batch),
and that C++ path drops the exception: 4 SIGTERMs of 5 were lost there, and the run trained on until killed.
"""

import signal


class Terminated(KeyboardInterrupt):
    """SIGTERM, stopped as Ctrl-C is."""


_pending = None  # the exception of a signal that arrived and has not stopped the command yet


def _raiser(exception):
    def handle(signum, frame):
        global _pending
        _pending = exception
        raise exception()

    return handle


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
        return replaced
    except ValueError:  # not the main thread: signals are not ours to handle
        return {}


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
    for signum, handler in handlers.items():
        if handler is not None:
            signal.signal(signum, handler)
