"""Bind a BentoML service instance's API methods once, instead of on every request.

BentoML 1.4's `APIMethod.__get__` builds a fresh wrapper on every attribute access: an
`inspect.signature` of the function, a `functools.wraps` copy and a new signature object. Its
request path reads the method that way once per request (`api_endpoint`) and, for a
`batchable=True` API, a second time (`batch_infer`), all on the event loop. Profiled under 32
clients on /classify_pixels, that was about 6% of the worker's event-loop time.

`APIMethod` is a non-data descriptor (it defines `__get__` only), so an attribute of the same
name in the instance's `__dict__` wins the lookup. Storing the result of one `__get__` there
gives BentoML exactly what it built before (the same callable with its `.local`), once.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable


def bind_api_methods(instance: object, names: Iterable[str]) -> None:
    """Store each API method of `instance`, bound once, in its `__dict__`."""
    cls = type(instance)
    for name in names:
        descriptor = inspect.getattr_static(cls, name, None)
        if descriptor is None or not hasattr(descriptor, "__get__"):
            raise AttributeError(f"{cls.__name__} has no API method {name!r}")
        instance.__dict__[name] = descriptor.__get__(instance, cls)
