"""Duplicate keys in a YAML mapping, found in the composed node graph. YAML says a mapping's
keys are unique, but PyYAML keeps the last of two silently: `alpha: 0.3` further down a long
study file would quietly replace the one the researcher reads first.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

MERGE_TAG = "tag:yaml.org,2002:merge"  # `<<: *base`: the keys it merges may be overridden


@dataclass(frozen=True)
class DuplicateKey:
    path: tuple[str, ...]  # the key paths of the mapping that holds it, then the key
    line: int  # 1-based, of the second occurrence
    first_line: int

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


def first_duplicate_key(root: yaml.Node) -> DuplicateKey | None:
    """The first scalar key that a mapping of `root`'s graph holds twice (each node visited
    once, so shared anchors cost nothing), or None."""
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, tuple[str, ...]]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*path, str(index))) for index, item in reversed(list(enumerate(node.value))))
        if not isinstance(node, yaml.MappingNode):
            continue
        lines: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != MERGE_TAG:
                key = (key_node.tag, key_node.value)
                line = key_node.start_mark.line + 1
                if key in lines:
                    return DuplicateKey((*path, key_node.value), line, lines[key])
                lines[key] = line
            stack.append((value_node, (*path, str(key_node.value))))
    return None
