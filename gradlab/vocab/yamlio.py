"""Reading YAML that may be hostile: a config file, a `--set`/`--sweep` value, a run's config.yaml.

    read_capped(path, what)        the text of a regular file of at most MAX_FILE_BYTES
    load_guarded(text, Loader)     the document, refused when its expanded size is too large

A YAML document under a kilobyte can stand for billions of values: an anchor referred to ten
times by a list that is itself referred to ten times, and so on (an "alias bomb"). PyYAML builds
it without copying, but everything after (validation, deep copies, error messages, canonical
forms) walks it expanded and hangs. `load_guarded` composes the node graph first and counts its
expanded size (every alias counted as the node it repeats, memoized: the count costs the size of
the graph, not of its expansion) before constructing anything; a reference cycle is refused too.
A FIFO or a device (`/dev/zero`) as a file never ends: only regular files are read, and at most
MAX_FILE_BYTES of them (a 24 MB YAML file takes minutes to parse).

Torch-, pandas- and pydantic-free (gradlab compare reads run configs through it).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

MAX_FILE_BYTES = 1_000_000  # a config is a few KB; a sweep with long value lists a few hundred
MAX_NODES = 100_000  # values (mappings, lists, scalars) in a document, aliases expanded
MAX_CHARS = 10_000_000  # characters of its scalars, aliases expanded


class TooLarge(yaml.YAMLError):
    """The document is larger than gradlab reads (its problem says how)."""

    def __init__(self, problem: str):
        super().__init__(problem)
        self.problem = problem


def read_capped(path: str | Path, limit: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of `path`. OSError for what the OS refuses; ValueError (one line, without
    the path) when it is not a regular file, is larger than `limit` bytes or is not UTF-8."""
    path = Path(path)
    with open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NONBLOCK)) as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode) else "not a regular file"
            raise ValueError(f"is {kind}, not a regular file")
        if info.st_size > limit:
            raise ValueError(f"is {info.st_size / 1e6:.1f} MB; gradlab reads YAML files of at most {limit / 1e6:g} MB")
        data = file.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"is larger than {limit / 1e6:g} MB; gradlab reads YAML files of at most {limit / 1e6:g} MB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("is not a UTF-8 text file") from None


def expanded_size(node: yaml.Node) -> tuple[int, int]:
    """(values, scalar characters) of the document below `node` with every alias expanded.
    Raises TooLarge past MAX_NODES or MAX_CHARS, or for a node that contains itself."""
    sizes: dict[int, tuple[int, int]] = {}
    open_nodes: set[int] = set()

    def size(n: yaml.Node) -> tuple[int, int]:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise TooLarge("an alias refers to a node that contains it (an endless document)")
        if isinstance(n, yaml.ScalarNode):
            result = (1, len(n.value))
        else:
            open_nodes.add(key)
            values, chars = 1, 0
            children = [c for pair in n.value for c in pair] if isinstance(n, yaml.MappingNode) else n.value
            for child in children:
                v, c = size(child)
                values, chars = values + v, chars + c
                if values > MAX_NODES or chars > MAX_CHARS:
                    break
            open_nodes.discard(key)
            result = (values, chars)
        if result[0] > MAX_NODES:
            raise TooLarge(f"expands to more than {MAX_NODES:,} values (YAML aliases repeat anchors); gradlab refuses documents that large")
        if result[1] > MAX_CHARS:
            raise TooLarge(f"expands to more than {MAX_CHARS:,} characters (YAML aliases repeat anchors); gradlab refuses documents that large")
        sizes[key] = result
        return result

    return size(node)


# Below this many characters a document without aliases cannot exceed MAX_NODES or MAX_CHARS
# (every value takes at least one character of the text: N characters hold at most N + 1 values),
# nor refer to itself: its size need not be counted.
SMALL_WITHOUT_ALIASES = MAX_NODES // 2


def load_guarded(text: str, loader_class: type = yaml.SafeLoader) -> Any:
    """The single YAML document in `text`, built with `loader_class` once its expanded size is
    known to be sane (see expanded_size). yaml.YAMLError (TooLarge among them) otherwise."""
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if "*" in text or len(text) >= SMALL_WITHOUT_ALIASES:  # (an alias is written *name)
            expanded_size(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


class RecordLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """PyYAML's safe loader, with libyaml's parser where PyYAML has it, that remembers the implicit
    tag of short plain scalars: a thousand runs' config.yaml repeat the same few hundred keys and
    values, and matching each against the resolvers' regular expressions is a third of reading them.
    The tag is a function of the scalar's text alone (the safe loader's resolvers are fixed, and it
    has no path resolvers), so what is remembered cannot go stale; at most 10,000 are."""

    _tags: dict[tuple[str, Any], str] = {}

    def resolve(self, kind: type, value: Any, implicit: Any) -> str:
        if kind is not yaml.ScalarNode or len(value) > 64 or self.yaml_path_resolvers:
            return super().resolve(kind, value, implicit)
        key = (value, implicit)
        tag = self._tags.get(key)
        if tag is None:
            tag = super().resolve(kind, value, implicit)
            if len(self._tags) < 10_000:
                self._tags[key] = tag
        return tag
