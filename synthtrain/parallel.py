"""The one way the library spreads work over processes."""

import multiprocessing
from collections.abc import Callable, Iterable, Iterator

_function: Callable | None = None  # what the forked workers run: they inherit it, so it is never pickled


def _call(job):
    return _function(job)


def parallel_map(function: Callable, jobs: Iterable, workers: int) -> Iterator:
    """``function(job)`` for each job, in order, in ``workers`` forked processes
    (in this one when ``workers`` is 1 or there is one job). The workers inherit
    ``function`` and everything it refers to (a closure, a bound method, large
    arrays), so only the jobs and the results cross between processes; results
    do not depend on the number of workers."""
    global _function
    jobs = list(jobs)
    if workers <= 1 or len(jobs) <= 1:
        yield from map(function, jobs)
        return
    _function = function
    try:
        with multiprocessing.get_context("fork").Pool(min(workers, len(jobs))) as pool:
            yield from pool.imap(_call, jobs)
    finally:
        _function = None
