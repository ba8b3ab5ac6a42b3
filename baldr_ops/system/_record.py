"""A tiny typed record base, used instead of ``dataclasses`` so ``doctor`` starts fast.

``dataclasses`` costs about 1 ms per class at import (it compiles code with ``exec``) plus ~9 ms for
the module itself (it imports ``inspect``); doctor defines ~25 record types and must start within 3x
of a bare ``python -c pass``. A Record declares fields as annotations with class-level defaults
(``factory(list)`` for mutable ones), takes them positionally or by keyword, and has ``__repr__``,
``__eq__`` and ``to_dict()``.
"""

from __future__ import annotations


class factory:  # noqa: N801 - reads like dataclasses.field(default_factory=...)
    __slots__ = ("make",)

    def __init__(self, make):
        self.make = make


_MISSING = object()


class Record:
    _fields: tuple[str, ...] = ()
    _defaults: dict = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        fields: list[str] = []
        defaults: dict = {}
        for base in reversed(cls.__mro__[1:]):
            if issubclass(base, Record) and base is not Record:
                fields += [f for f in base._fields if f not in fields]
                defaults.update(base._defaults)
        for name in cls.__dict__.get("__annotations__", {}):
            if name.startswith("_"):
                continue
            if name not in fields:
                fields.append(name)
            if name in cls.__dict__:
                defaults[name] = cls.__dict__[name]
                if isinstance(defaults[name], factory):
                    delattr(cls, name)
        cls._fields = tuple(fields)
        cls._defaults = defaults

    def __init__(self, *args, **kwargs):
        if len(args) > len(self._fields):
            raise TypeError(f"{type(self).__name__} takes at most {len(self._fields)} positional arguments")
        for name, value in zip(self._fields, args, strict=False):
            if name in kwargs:
                raise TypeError(f"{type(self).__name__} got {name!r} twice")
            kwargs[name] = value
        for name in self._fields:
            if name in kwargs:
                value = kwargs.pop(name)
            else:
                value = self._defaults.get(name, _MISSING)
                if value is _MISSING:
                    raise TypeError(f"{type(self).__name__} needs {name!r}")
                if isinstance(value, factory):
                    value = value.make()
            object.__setattr__(self, name, value)
        if kwargs:
            raise TypeError(f"{type(self).__name__} has no field(s) {', '.join(kwargs)}")

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._fields)
        return f"{type(self).__name__}({inner})"

    def __eq__(self, other) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self._fields)

    __hash__ = None  # mutable

    def to_dict(self) -> dict:
        return {n: _plain(getattr(self, n)) for n in self._fields}


def _plain(value):
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
