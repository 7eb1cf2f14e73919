"""One registry pattern (timm style) for everything medkd builds by name.

A :class:`Registry` maps names to builders (functions or classes) with a ``register`` decorator, a
``create(name, **kwargs)`` that checks the options against the builder's signature, ``names(pattern)``,
and one-line "did you mean" errors for unknown names and options. Data formats, segmentation losses,
distillation losses and models each keep one and expose ``register_*``, ``create_*`` and ``list_*``.

Example:
    >>> widgets = Registry("widget")
    >>> @widgets.register("round", description="a round widget")
    ... def make_round(size: int = 1) -> str:
    ...     return f"round-{size}"
    >>> widgets.create("round", size=2), widgets.names("r*"), widgets.meta("round")["description"]
    ('round-2', ['round'], 'a round widget')
    >>> widgets.create("rund")
    Traceback (most recent call last):
    medkd.errors.ConfigError: unknown widget 'rund'; did you mean 'round'?
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from medkd.errors import ConfigError, MedkdError, unknown_name_error

__all__ = ["Registry", "signature_options"]

T = TypeVar("T")


def signature_options(builder: Callable[..., Any], skip: Iterable[str] = ()) -> dict[str, Any]:
    """Named parameters of ``builder`` (a function or class) with their defaults (None when there is none).

    Args:
        builder: the function, or class whose ``__init__`` is read.
        skip: parameter names left out (e.g. ``in_channels`` that the caller always passes).

    Returns:
        Option name -> default, in signature order.
    """
    skipped = set(skip) | {"self"}
    params = inspect.signature(builder).parameters
    return {
        k: (None if p.default is inspect.Parameter.empty else p.default)
        for k, p in params.items()
        if k not in skipped and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


class Registry(Mapping[str, T], Generic[T]):
    """Name -> builder, in registration order (a read-only mapping), with metadata per name.

    Args:
        kind: what the names are, for messages (``"model"``, ``"dataset format"``).
        option_kind: what unknown-option messages call it (default ``kind``).
        skip_options: builder parameters that are not user options (always passed by the caller).
        error: the :class:`~medkd.errors.MedkdError` class of unknown-name / unknown-option errors.
    """

    def __init__(self, kind: str, *, option_kind: str | None = None, skip_options: Iterable[str] = (),
                 error: type[MedkdError] = ConfigError) -> None:
        self.kind = kind
        self.option_kind = option_kind or kind
        self.skip_options = tuple(skip_options)
        self.error = error
        self._items: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    # -- mapping interface (registration order) ---------------------------------------------------------------
    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._items)})"

    # -- registering ------------------------------------------------------------------------------------------
    def add(self, name: str, obj: T, **meta: Any) -> T:
        """Register ``obj`` under ``name`` with metadata ``meta``; registering the same object again is a no-op.

        Raises:
            ValueError: ``name`` is already taken by another object (a programming error, not a user one).
        """
        if name in self._items and self._items[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        self._meta[name] = dict(meta)
        return obj

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator form of :meth:`add`; it returns the builder unchanged."""

        def deco(obj: T) -> T:
            return self.add(name, obj, **meta)

        return deco

    def unregister(self, name: str) -> None:
        """Remove ``name`` if registered (tests use it to clean up)."""
        self._items.pop(name, None)
        self._meta.pop(name, None)

    # -- looking up -------------------------------------------------------------------------------------------
    def lookup(self, name: str) -> T:
        """The builder registered as ``name``.

        Raises:
            MedkdError: (``error``) unknown name, with the nearest valid names.
        """
        if name not in self._items:
            raise unknown_name_error(self.kind, name, list(self._items) or ["(none)"], cls=self.error)
        return self._items[name]

    def meta(self, name: str) -> dict[str, Any]:
        """The metadata given when ``name`` was registered (a copy); unknown names raise like :meth:`lookup`."""
        self.lookup(name)
        return dict(self._meta[name])

    def meta_view(self, key: str) -> Mapping[str, Any]:
        """A live read-only mapping name -> ``meta(name)[key]`` (e.g. name -> description)."""
        return _MetaView(self, key)

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching a shell-style ``pattern`` (case-insensitive)."""
        return sorted(n for n in self._items if fnmatch.fnmatchcase(n.lower(), pattern.lower()))

    def options(self, name: str) -> dict[str, Any]:
        """User options of ``name``'s builder with their defaults (from its signature, less ``skip_options``)."""
        return signature_options(self.lookup(name), self.skip_options)

    def check_options(self, name: str, kwargs: Mapping[str, Any]) -> None:
        """Raise (``error``) for the first key of ``kwargs`` that is not an option of ``name``, naming the nearest."""
        valid = self.options(name)
        for key in kwargs:
            if key not in valid:
                raise unknown_name_error(f"option for {self.option_kind} {name!r}:", key, list(valid) or ["(none)"],
                                         cls=self.error)

    def create(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Check ``kwargs`` against the options of ``name`` and call its builder with ``args`` and ``kwargs``."""
        builder = self.lookup(name)
        self.check_options(name, kwargs)
        return builder(*args, **kwargs)


class _MetaView(Mapping[str, Any]):
    """Name -> one metadata value of a :class:`Registry`, following later registrations."""

    def __init__(self, registry: Registry[Any], key: str) -> None:
        self._registry, self._key = registry, key

    def __getitem__(self, name: str) -> Any:
        if name not in self._registry:
            raise KeyError(name)
        return self._registry.meta(name)[self._key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._registry)

    def __len__(self) -> int:
        return len(self._registry)

    def __repr__(self) -> str:
        return repr(dict(self))
