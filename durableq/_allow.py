"""``allowed_modules=``: the executor's tasks may only name functions from these modules.

A stored task is a pickle, and a pickle names every function and class it needs by import
path. The HMAC keeps out anyone without the queue's key; the allow-list limits what even a
holder of the key can make a worker import and call. Workers unpickle tasks with an
``Unpickler`` whose ``find_class`` accepts only the listed modules (and their submodules)
plus a fixed set of plain-data types, so a task naming ``os.system`` or ``builtins.eval``
is refused before anything of it runs (pickle's "Restricting Globals" recipe). The
executor also refuses such a function at ``submit``, where the mistake is made.
"""

from __future__ import annotations

import builtins
import io
import pickle
import re
from collections.abc import Callable, Iterable
from typing import Any, Final

from ._errors import TaskRefused

_MODULE: Final = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
#: Plain data a task's arguments may hold whatever the allow-list says: constructing these
#: runs no code of the pickle's choosing.
_BUILTIN_TYPES: Final = frozenset({
    "bool", "bytearray", "bytes", "complex", "dict", "float", "frozenset", "int", "list",
    "object", "range", "set", "slice", "str", "tuple",
})
_ALWAYS: Final = {
    "copyreg": frozenset({"_reconstructor"}),
    "collections": frozenset({"OrderedDict", "defaultdict", "deque", "Counter"}),
    "datetime": frozenset({"date", "datetime", "time", "timedelta", "timezone"}),
    "decimal": frozenset({"Decimal"}),
    "fractions": frozenset({"Fraction"}),
    "uuid": frozenset({"UUID", "SafeUUID"}),
    "functools": frozenset({"partial"}),  # its function is looked up (and checked) too
    "durableq._poolcore": frozenset({"Call"}),  # Pool's wrapper around the user's function
}


class AllowList:
    """Modules whose functions and classes a stored task may name.

    Args:
        modules: import paths; each allows itself and its submodules (``"myapp"`` allows
            ``myapp.tasks``).

    Raises:
        ValueError: a name that is not an import path.
    """

    def __init__(self, modules: Iterable[str]) -> None:
        if isinstance(modules, str):
            raise TypeError("allowed_modules must be a list of module names, not one string")
        names = sorted(set(modules))
        for name in names:
            if not isinstance(name, str) or not _MODULE.match(name):
                raise ValueError(f"allowed_modules: {name!r} is not an import path")
        self.modules = tuple(names)

    def allows(self, module: str, name: str) -> bool:
        if module == "builtins":
            value = getattr(builtins, name, None)
            return name in _BUILTIN_TYPES or (
                isinstance(value, type) and issubclass(value, BaseException)
            )
        if name in _ALWAYS.get(module, ()):
            return True
        return any(module == m or module.startswith(m + ".") for m in self.modules)

    def check(self, fn: Callable[..., Any]) -> None:
        """At submit: refuse a function from a module not on the list."""
        module = getattr(fn, "__module__", None) or "?"
        name = getattr(fn, "__qualname__", type(fn).__name__)
        if not self.allows(module, name):
            raise TaskRefused(module, name, self.modules)

    def loads(self, data: bytes | memoryview) -> Any:
        """Unpickle a stored task, refusing any global from outside the list."""
        return _Unpickler(io.BytesIO(data), self).load()

    def __reduce__(self) -> tuple[type[AllowList], tuple[tuple[str, ...]]]:
        return (AllowList, (self.modules,))

    def __repr__(self) -> str:
        return f"AllowList({list(self.modules)!r})"


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, allowed: AllowList) -> None:
        super().__init__(file)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        if not self._allowed.allows(module, name):
            raise TaskRefused(module, name, self._allowed.modules)
        return super().find_class(module, name)
