"""Small Deferred helpers the logic shares."""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure

T = TypeVar("T")


def observe(source: defer.Deferred[T]) -> defer.Deferred[T]:
    """A new Deferred that fires with `source`'s result, leaving `source`'s chain unchanged.

    Lets several waiters (or a waiter with a timeout) wait for one piece of
    work without stealing its result from the others.
    """
    observer: defer.Deferred[T] = defer.Deferred()

    def passthrough(result: Any) -> Any:
        if isinstance(result, Failure):
            observer.errback(result)
        else:
            observer.callback(result)
        return result

    source.addBoth(passthrough)
    return observer
