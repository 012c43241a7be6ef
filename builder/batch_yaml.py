"""The batch file as YAML: nodes that keep their line numbers, mappings checked for duplicate
and merged keys, the matrix and its exclusions, and every problem found reported together."""

from __future__ import annotations

import codecs
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from builder.kit.errors import BuilderError

MERGE = "tag:yaml.org,2002:merge"
# The most values a batch file may hold once its aliases are expanded: nine nested aliases of
# nine items each made 387 million, and reading them ran past a minute and gigabytes.
MAX_VALUES = 100_000


@dataclass
class Entry:
    key: str  # as written, for messages
    value: Any
    line: int
    where: str  # defaults, matrix, jobs[2]
    # yes/no/on/off as written, where YAML 1.1 read it as true/false: messages showed a True
    # the user never wrote (qkv-packing: off read "'False' is not valid")
    bool_word: str | None = None


class Problems:
    """Every problem in the file, reported together as one error."""

    def __init__(self, path: Path):
        self.path, self.items = path, {}

    def add(self, line: int, message: str) -> None:
        # keyed by text: a bad default would otherwise repeat once per job
        self.items.setdefault(f"{self.path}:{line}: {message}", line)

    def raise_if_any(self) -> None:
        items = sorted(self.items, key=self.items.get)
        if len(items) == 1:
            raise BuilderError(f"{items[0]}\nnothing was built")
        if items:
            raise BuilderError(f"{self.path}: {len(items)} problems, nothing was built:\n  " + "\n  ".join(items))


_YAML = yaml.SafeLoader("")  # constructs values from composed nodes, which keep line numbers


def reset() -> None:
    """Forget the values built from an earlier file (the loader caches them by node)."""
    _YAML.constructed_objects.clear()


def line_of(node: yaml.Node) -> int:
    return node.start_mark.line + 1


class FloatText(str):
    """A YAML float kept as written: still a number, for the options that must be text."""

    def __repr__(self) -> str:  # as the file wrote it, in messages
        return str(self)


def value_of(node: yaml.Node) -> Any:
    # A YAML float forgets how it was written (target-ort: 1.30 would read 1.3), and no
    # option is a float: keep the text.
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:float":
        return FloatText(node.value)
    return _YAML.construct_object(node, deep=True)


def entry(key: str, node: yaml.Node, line: int, where: str) -> Entry:
    word = node.value if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:bool" else None
    return Entry(key, value_of(node), line, where, word if word and word.lower() not in ("true", "false") else None)


_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


NEWLINE = b"\n"  # for f-strings, which take no backslash before Python 3.12


def read_text(path: Path) -> str:
    """The file's text: UTF-8, or UTF-8/16/32 with a byte-order mark (PowerShell's
    `>` and Out-File write UTF-16 with one); anything else is one clear error."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BuilderError(f"cannot read batch file {path}: {e.strerror or e}") from None
    encoding = next((name for bom, name in _BOMS if data.startswith(bom)), "utf-8")
    if encoding == "utf-8" and len(data) >= 2 and b"\0" in data[:2]:
        encoding = "utf-16-le" if data[1:2] == b"\0" else "utf-16-be"  # UTF-16 without a mark
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        # the line, where lines are counted in bytes (UTF-8), for an editor to go to
        at = f":{data.count(NEWLINE, 0, e.start) + 1}" if encoding.startswith("utf-8") else ""
        raise BuilderError(
            f"{path}{at}: not {encoding.upper().removesuffix('-SIG')} text (byte {e.object[e.start]:#04x} "
            f"at offset {e.start}); save it as UTF-8 (PowerShell: Set-Content -Encoding utf8) "
            "and run again"
        ) from None


def compose(path: Path) -> yaml.Node | None:
    try:
        text = read_text(path)
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.reader.ReaderError as e:
            # A control character (a terminal colour code pasted in, a NUL): PyYAML said it in two
            # lines, at a position in "<unicode string>", without the line.
            line = text.count("\n", 0, e.position) + 1
            column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
            raise BuilderError(
                f"{path}:{line}: not valid YAML: unprintable character U+{e.character:04X} at column {column}, "
                "which YAML does not allow; delete it"
            ) from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise BuilderError(f"{where}: not valid YAML: {_yaml_fault(e)}") from None
        _refuse_unknown_tags(root, path)
        _refuse_alias_bombs(root, path)
    except BuilderError as e:
        # Said as the file's other problems say it (Problems): without it, a user could not tell
        # from the message whether a file that failed to read stopped the batch or only a job.
        raise BuilderError(f"{e}\nnothing was built") from None
    return root


# What to do about the faults whose PyYAML wording says nothing of it.
_YAML_FIXES = {
    "found duplicate anchor": "give each anchor its own name (&gpu, &cpu)",
    "found undefined alias": "an alias (*name) needs an anchor (&name) above it in the file, as x-name: &name {...}",
    "expected a single document": "a batch file is one YAML document: remove the --- line, or merge the two",
    "'\\t' that cannot start any token": "replace the tab with spaces (YAML takes no tabs there)",
}


def _yaml_fault(e: yaml.YAMLError) -> str:
    """PyYAML's fault in words a user can act on. Its problem alone can be the end of a sentence
    its context begins: a duplicate anchor read 'second occurrence', a second document 'but found
    another document'. A context that only says what was being read ('while parsing ...') is left out."""
    problem = getattr(e, "problem", None) or str(e)
    context, mark = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context and not context.startswith("while"):
        problem = f"{context}{f' on line {mark.line + 1}' if mark else ''}, {problem} here"
    fix = next((fix for fault, fix in _YAML_FIXES.items() if fault in problem), None)
    return f"{problem}; {fix}" if fix else problem


def _refuse_alias_bombs(root: yaml.Node | None, path: Path) -> None:
    """Count the values the file holds with its aliases expanded, without expanding them (each
    node's count once), and refuse a file past MAX_VALUES or an alias inside its own anchor."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, open_: set[int]) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_:
            raise BuilderError(
                f"{path}:{line_of(node)}: a YAML alias inside the value its anchor marks (it would repeat "
                "without end); write the value out"
            )
        open_.add(id(node))
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
        children += node.value if isinstance(node, yaml.SequenceNode) else []
        sizes[id(node)] = 1 + sum(size(child, open_) for child in children)
        open_.discard(id(node))
        return sizes[id(node)]

    if root is None or size(root, set()) <= MAX_VALUES:
        return
    # Name the first top-level entry past the limit, else the file.
    pairs = root.value if isinstance(root, yaml.MappingNode) else []
    key, node = next(((k, v) for k, v in pairs if sizes[id(v)] > MAX_VALUES), (None, root))
    named = f"{key.value}: " if isinstance(key, yaml.ScalarNode) else ""
    raise BuilderError(
        f"{path}:{line_of(node)}: {named}its YAML aliases expand to {sizes[id(node)]:,} values, more than a "
        f"batch file may hold ({MAX_VALUES:,}); write the values out, or alias fewer of them"
    )


def _refuse_unknown_tags(root: yaml.Node | None, path: Path) -> None:
    # Values are constructed lazily, wherever a key is read: a tag the safe loader has no
    # constructor for (!custom, !!python/...) would fail there with PyYAML's traceback.
    stack, seen = [root] if root is not None else [], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:  # an alias shares its anchor's node
            continue
        seen.add(id(node))
        if node.tag not in yaml.SafeLoader.yaml_constructors and node.tag != MERGE:
            raise BuilderError(
                f"{path}:{line_of(node)}: the YAML tag {node.tag.replace('tag:yaml.org,2002:', '!!')} means "
                "nothing in a batch file; remove it and write the plain value"
            )
        if isinstance(node, yaml.MappingNode):
            stack += [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value


def mapping_pairs(
    node: yaml.Node | None, where: str, problems: Problems, merging: tuple = ()
) -> list[tuple[str, int, yaml.Node]]:
    if node is None or node.tag == "tag:yaml.org,2002:null":
        return []
    if not isinstance(node, yaml.MappingNode):
        problems.add(line_of(node), f"{where}: must be a mapping of key: value")
        return []
    pairs, seen, merged = [], {}, []
    for key_node, value_node in node.value:
        if key_node.tag == MERGE:
            merged += _merged(value_node, where, problems, (*merging, id(node)))
            continue
        key = str(value_of(key_node))
        norm = key.replace("-", "_")
        if norm in seen:  # plain YAML would silently keep the last one
            problems.add(line_of(key_node), f"{where}.{key}: given twice (also on line {seen[norm]})")
        seen[norm] = line_of(key_node)
        pairs.append((key, line_of(key_node), value_node))
    # YAML's merge keys (<<: *anchor): a key written in the mapping overrides a merged one,
    # and of several merged mappings the first one given wins.
    kept = []
    for key, line, value in merged:
        norm = key.replace("-", "_")
        if norm not in seen:
            seen[norm] = line
            kept.append((key, line, value))
    return kept + pairs


def _merged(node: yaml.Node, where: str, problems: Problems, merging: tuple) -> list[tuple[str, int, yaml.Node]]:
    """The pairs a merge key brings in, each merged mapping's own merges applied; the YAML
    nodes are left as they are, since an anchored mapping is also read where it was written."""
    pairs = []
    for sub in node.value if isinstance(node, yaml.SequenceNode) else [node]:
        if id(sub) in merging:
            problems.add(line_of(sub), f"{where}.<<: merges the mapping it is in; merge another one")
            continue
        if not isinstance(sub, yaml.MappingNode):
            problems.add(
                line_of(sub),
                f"{where}.<<: merges mappings: <<: *name or <<: [*a, *b], where &name marks a mapping "
                "(x-name: &name {...})",
            )
            continue
        pairs += mapping_pairs(sub, where, problems, merging)
    return pairs


def entries_of(node, where: str, problems: Problems) -> dict[str, Entry]:
    return {
        key.replace("-", "_"): entry(key, value, line, where)
        for key, line, value in mapping_pairs(node, where, problems)
    }


def matrix_specs(line: int, node, problems: Problems):
    """List values are axes; scalars (e.g. the output template) apply to every job; exclude:
    lists the combinations to leave out, each by some of its axes' values."""
    axes, lists, exclude = [], [], None
    for key, key_line, value in mapping_pairs(node, "matrix", problems):
        norm = key.replace("-", "_")
        if norm == "exclude":
            exclude = (key_line, value)
        elif isinstance(value, yaml.SequenceNode):
            if not value.value:
                problems.add(key_line, f"matrix.{key}: empty list, so the matrix has no jobs")
            axes.append([(norm, entry(key, item, line_of(item), "matrix")) for item in value.value])
            lists.append(norm)
        else:
            axes.append([(norm, entry(key, value, key_line, "matrix"))])
    excluded = _matrix_exclude(exclude, lists, problems) if exclude else []
    used = [False] * len(excluded)
    for i, combination in enumerate(itertools.product(*axes) if axes else []):
        values = dict(combination)
        hits = [j for j, (_, wanted) in enumerate(excluded) if all(values[k].value == v for k, v in wanted.items())]
        for j in hits:
            used[j] = True
        if not hits:  # the label errors give a matrix job names its combination
            named = ", ".join(f"{values[k].key} {values[k].value}" for k in lists)
            yield f"matrix[{i}]", line, values, f"matrix[{i}] ({named})" if named else f"matrix[{i}]"
    for (entry_line, wanted), hit in zip(excluded, used):
        if not hit:
            shown = ", ".join(f"{k.replace('_', '-')}: {v}" for k, v in wanted.items())
            problems.add(entry_line, f"matrix.exclude: {{{shown}}} matches no combination of the matrix's values")


def _matrix_exclude(exclude: tuple[int, yaml.Node], lists: list[str], problems: Problems) -> list:
    """matrix.exclude -> [(line, {axis: value})]; each entry names matrix axes only."""
    line, node = exclude
    if not isinstance(node, yaml.SequenceNode):
        problems.add(line, "matrix.exclude: must be a list of combinations to leave out (- ep: cuda)")
        return []
    entries = []
    for i, item in enumerate(node.value):
        pairs = mapping_pairs(item, f"matrix.exclude[{i}]", problems)
        wanted = {}
        for key, key_line, value in pairs:
            norm = key.replace("-", "_")
            if norm not in lists:
                axes = ", ".join(k.replace("_", "-") for k in lists) or "none"
                problems.add(key_line, f"matrix.exclude[{i}].{key}: not a list in the matrix (its lists: {axes})")
            wanted[norm] = value_of(value)
        if pairs and len(wanted) == len(pairs) and all(k in lists for k in wanted):
            entries.append((line_of(item), wanted))
    return entries
