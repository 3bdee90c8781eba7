"""The one YAML reader (and writer) for recipes, stage configs, `--set` values, evaluation protocols and benchmarks.

PyYAML's `safe_load` is safe from code execution but not from two things a recipe can hold:
- duplicate keys, silently resolved to the last one (`beta: 0.1` ... `beta: 10`): refused here, with both lines;
- aliases that expand exponentially (a 573-byte "billion laughs" document): PyYAML shares the aliased objects, so the
  load is cheap, but whatever walks the result (pydantic, the manifest's JSON) expands it and exhausts memory.
  Here the document's size with every alias expanded is counted on the node graph, before anything is built, and a
  document over `MAX_EXPANDED_NODES` (or one that refers to itself) is refused. Ordinary anchors and merge keys
  (`<<: *defaults`) stay fine.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from selfalign.errors import SelfAlignError

MAX_EXPANDED_NODES = 100_000  # a large recipe has a few hundred


class YamlError(SelfAlignError, ValueError):
    """A YAML text that cannot be read; the message names the file and line."""


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first on line {seen[key] + 1}): remove one",
                        key_node.start_mark)
                seen[key] = key_node.start_mark.line
            except TypeError:  # an unhashable key: the base class says so
                break
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node, sizes: dict, active: set) -> int:
    """The number of nodes the document has with every alias expanded, in time linear in the node graph."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in active:
        raise YamlError(f"line {node.start_mark.line + 1}: an alias refers to itself (a recursive document)")
    active.add(key)
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, sizes, active) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, sizes, active) + _expanded_size(v, sizes, active) for k, v in node.value)
    else:
        size = 1
    active.discard(key)
    sizes[key] = size
    if size > MAX_EXPANDED_NODES:
        raise YamlError(f"line {node.start_mark.line + 1}: with its aliases expanded the document has over "
                        f"{MAX_EXPANDED_NODES:,} values (an alias bomb?); write it out without aliases")
    return size


def loads(text: str, source: str | Path = "<text>"):
    """Parse one YAML (or JSON) document; errors name `source` and the line."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {}, set())
        return loader.construct_document(node)
    except YamlError as e:
        raise YamlError(f"{source}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise YamlError(f"{source}{where}: not valid YAML or JSON ({problem})") from None
    except RecursionError:
        raise YamlError(f"{source}: nested too deeply") from None
    finally:
        loader.dispose()


def read_text(path: str | Path, what: str = "file") -> str:
    """A YAML file's text; a missing file, a folder or FIFO, and non-UTF-8 bytes are one-line errors naming it."""
    path = Path(path)
    if not path.exists():
        raise YamlError(f"{path}: {what} not found")
    if not path.is_file():
        raise YamlError(f"{path}: is not a {what} file (a folder?)")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise YamlError(f"{path}: not UTF-8 text (byte {e.start + 1})") from None


def load(path: str | Path):
    """Read and parse a YAML (or JSON) file; errors name the file (and the line)."""
    return loads(read_text(path), path)


def write(path: str | Path, data) -> None:
    """Write `data` as YAML, keys in their order, atomically (a stage config the loop passes to its subprocess)."""
    from selfalign.io import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
