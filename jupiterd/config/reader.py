"""The bounded YAML reader: a file read up to a size, parsed with limits on
depth, values and text (aliases counted as expanded), duplicate keys refused."""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

import yaml

from jupiterd.config.errors import ConfigError
from probes.options import quote

# --------------------------------------------------------------------------- reading
# Bounds on what a file may make the loader do. Each is far above any real
# configuration (the full example: 10 KiB, depth 8, about 400 values).

MAX_FILE_BYTES = 1024 * 1024
MAX_SECRET_BYTES = 64 * 1024
MAX_DEPTH = 64  # nested mappings and lists, counted through aliases
MAX_VALUES = 50_000  # scalars, mappings and lists; an alias counts each time it is used
MAX_TEXT = 4 * 1024 * 1024  # characters of scalar text, aliases expanded likewise


class FileTooLarge(Exception):
    """More bytes than the reader's limit."""


def read_bounded(path: str, limit: int) -> bytes:
    """At most ``limit`` bytes of ``path`` (``FileTooLarge`` beyond, an
    ``OSError`` for a directory or an unreadable file). A FIFO or a device
    is read to its end or the limit, never slurped whole."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        if not stat.S_ISREG(mode):
            os.set_blocking(fd, True)  # a pipe: wait for its writer
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise FileTooLarge
        return b"".join(chunks)
    finally:
        os.close(fd)


class _Refused(Exception):
    """A document the loader will not build, at a place in the file."""

    def __init__(self, message: str, mark: Any, note: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark
        self.note = note


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader with bounds, checked while the document is
    composed (before anything is built): nesting depth, the number of values
    and the amount of text with every alias expanded (a "billion laughs"
    stops at the limit instead of exhausting memory), no alias cycles, and
    no duplicate keys in a mapping (YAML says they are an error; PyYAML
    would keep the last). Anchors, aliases and merge keys work as usual."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._composed = 0
        # id(node) -> (values, height, characters) with aliases expanded.
        self._sizes: dict[int, tuple[int, int, int]] = {}

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # Refused in the scanner already: it keeps a possible key per open
        # bracket and checks them all at every token (quadratic in depth).
        if self.flow_level >= MAX_DEPTH:
            raise _Refused(f"nested more than {MAX_DEPTH} levels deep", self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None and id(target) not in self._sizes:
                raise _Refused(
                    "an alias refers to the mapping or list that contains it", event.start_mark
                )
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            raise _Refused(f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
        self._composed += 1
        if self._composed > MAX_VALUES:
            raise _Refused(f"more than {MAX_VALUES:,} values", event.start_mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._measure(node)
        return node

    def _measure(self, node: Any) -> None:
        if isinstance(node, yaml.ScalarNode):
            values, height, text = 1, 1, len(node.value)
        else:
            children = (
                [n for pair in node.value for n in pair]
                if isinstance(node, yaml.MappingNode)
                else node.value
            )
            sizes = [self._sizes[id(c)] for c in children]
            values = 1 + sum(v for v, _, _ in sizes)
            height = 1 + max((h for _, h, _ in sizes), default=0)
            text = sum(t for _, _, t in sizes)
        if values > MAX_VALUES or text > MAX_TEXT:
            raise _Refused(
                f"expands to more than {MAX_VALUES:,} values or {MAX_TEXT // 1048576} MiB "
                "of text (each use of an alias counts)",
                node.start_mark,
            )
        if height > MAX_DEPTH:
            raise _Refused(
                f"nested more than {MAX_DEPTH} levels deep (counting through aliases)",
                node.start_mark,
            )
        self._sizes[id(node)] = (values, height, text)

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise _Refused(
                    "a key must be a plain value, not a mapping or list", key_node.start_mark
                )
            key = self.construct_object(key_node)
            first = seen.get(key)
            if first is not None:
                raise _Refused(
                    f"duplicate key {quote(key)}",
                    key_node.start_mark,
                    f" (first at line {first.line + 1})",
                )
            seen[key] = key_node.start_mark
        return node

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        # PyYAML's scalar constructors raise ValueError, KeyError and more
        # for values such as `!!int x`, `!!bool maybe` or `2001-13-45`.
        try:
            return super().construct_object(node, deep)
        except (yaml.YAMLError, _Refused):
            raise
        except Exception:
            kind = str(node.tag).rsplit(":", 1)[-1][:20]
            raise _Refused(f"not a valid {kind} value", node.start_mark) from None


def _where(mark: Any) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _parse_yaml(data: bytes, path: str) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            path, None, f"not UTF-8 text (an invalid byte at line {line}, byte {exc.start})"
        ) from None
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text)  # checks the characters already
        return loader.get_single_data()
    except _Refused as exc:
        raise ConfigError(path, None, f"{exc.message}{_where(exc.mark)}{exc.note}") from None
    except yaml.reader.ReaderError as exc:
        raise ConfigError(
            path,
            None,
            f"a character YAML does not allow (#x{exc.character:04x}) at character {exc.position}",
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        # PyYAML's problem may quote an anchor or tag from the file: cut short.
        problem = str(getattr(exc, "problem", None) or "invalid YAML")[:100]
        raise ConfigError(path, None, f"YAML syntax error{_where(mark)}: {problem}") from None
    except Exception as exc:  # a PyYAML defect must not escape as a traceback
        raise ConfigError(path, None, f"cannot be read as YAML ({type(exc).__name__})") from None
    finally:
        if loader is not None:
            loader.dispose()
