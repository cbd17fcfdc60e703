"""Typed, located access to a config document's plain YAML values.

Config documents arrive as plain dicts and lists. `Reader` hands out typed values and turns every
problem into a `ConfigError` that names the file, the document and the key path
(``build.yml, document 2: sources[0].path: ...``), or into a warning for a key it does not know.
Keys are matched exactly: a key that differs from a known one only in case is reported with the
right spelling (kbld, which decodes through JSON, would silently accept it).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from devloop.errors import ConfigError

# Keys every Kubernetes-shaped document may carry; not worth listing in "known:" hints.
_ENVELOPE = ("apiVersion", "kind", "metadata")
_KINDS: dict[type, str] = {str: "a string", bool: "a boolean", int: "a number", float: "a number"}
_KINDS |= {list: "a list", dict: "a mapping", type(None): "null"}


class Reader:
    """Typed access to one document's values; every problem names `where` and the key path."""

    def __init__(self, where: str, warnings: list[str]) -> None:
        self.where = where  # "file, document N"
        self.warnings = warnings  # shared by all readers of one load; full messages

    def error(self, path: str, problem: str, hint: str = "") -> ConfigError:
        return ConfigError(f"{self.where}: {path}" if path else self.where, problem, hint)

    def warn(self, path: str, text: str) -> None:
        self.warnings.append(f"{self.where}: {path}: {text}")

    def fields(self, value: Any, path: str, known: Sequence[str]) -> Mapping[str, Any]:
        """`value` as a mapping (null is empty), with a warning per unknown key."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(path, f"expected a mapping, found {kind_of(value)}")
        for key in value:
            if key not in known:
                self.warn(join(path, str(key)), _unknown(str(key), known))
        return value

    def refuse(self, value: Any, path: str, keys: Sequence[str], problem: str, hint: str) -> None:
        """Raise for the first of `keys` set in the mapping `value` (fields devloop lacks)."""
        present = [k for k in keys if isinstance(value, dict) and value.get(k) is not None]
        if present:
            raise self.error(join(path, present[0]), problem, hint)

    def string(self, m: Mapping[str, Any], key: str, path: str, required: str = "") -> str:
        """The string at `key`; "" when absent; `required` describes a field that must be set."""
        value = m.get(key)
        if value is None or value == "":
            if required:
                raise self.error(join(path, key), f"required, {required}")
            return ""
        if not isinstance(value, str):
            raise self._not_a_string(join(path, key), value)
        return value

    def boolean(self, m: Mapping[str, Any], key: str, path: str) -> bool:
        value = m.get(key)
        if value is not None and not isinstance(value, bool):
            raise self.error(join(path, key), f"expected true or false, found {kind_of(value)}")
        return bool(value)

    def items(self, m: Mapping[str, Any], key: str, path: str) -> Iterator[tuple[str, Any]]:
        """(key path, item) of each element of the list at `key` (null is empty)."""
        value = m.get(key)
        if value is None:
            return iter(())
        if not isinstance(value, list):
            raise self.error(join(path, key), f"expected a list, found {kind_of(value)}")
        return ((f"{join(path, key)}[{i}]", item) for i, item in enumerate(value))

    def strings(self, m: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
        return tuple(self.text(item, p) for p, item in self.items(m, key, path))

    def text(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.error(path, f"expected a non-empty string, found {kind_of(value)}")
        return value

    def string_map(self, value: Any, path: str) -> dict[str, str]:
        """A mapping of names to strings (null is empty)."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(
                path, f"expected a mapping of names to strings, found {kind_of(value)}"
            )
        for key, item in value.items():
            if not isinstance(item, str):
                raise self._not_a_string(f"{path}.{key}", item)
        return {str(k): v for k, v in value.items()}

    def _not_a_string(self, path: str, value: Any) -> ConfigError:
        # YAML reads `0.30` or `8080` as numbers; quoting is the usual fix.
        hint = "Quote it" if isinstance(value, int | float) else ""
        return self.error(path, f"expected a string, found {kind_of(value)}", hint)


def join(path: str, key: str) -> str:
    """The key path of `key` inside `path`: ``sources[0]`` + ``path`` -> ``sources[0].path``."""
    return f"{path}.{key}" if path else key


def kind_of(value: Any) -> str:
    described = _KINDS.get(type(value), f"a {type(value).__name__}")
    # Only short strings are quoted back: a long value is more likely a secret than a typo.
    return f"{described} ({value!r})" if isinstance(value, str) and len(value) < 20 else described


def _unknown(key: str, known: Sequence[str]) -> str:
    same = [k for k in known if k.lower() == key.lower()]
    if same:
        return (
            f"unknown field, ignored: did you mean '{same[0]}'? "
            "(devloop matches keys exactly, kbld ignores case)"
        )
    listed = ", ".join(k for k in known if k not in _ENVELOPE)
    return f"unknown field, ignored (known: {listed or 'none'})"
