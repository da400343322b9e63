"""Strict YAML: the safe loader, with a key given twice in one mapping an error naming the key and both lines.

PyYAML keeps the last of duplicate keys, so `version: 1.0.0` then `version: 9.9.9` would silently become 9.9.9,
while a reviewer (or a policy reading the first) sees 1.0.0. Every YAML document edgefleet reads (model manifests,
stack files, Pulumi.yaml) goes through `load`.
"""

from __future__ import annotations

from typing import Any

import yaml

_BASE: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when PyYAML has it: ~10x faster


class DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: Any, first_line: int, second_line: int) -> None:
        self.key, self.first_line, self.second_line = key, first_line, second_line
        super().__init__(f"key {key!r} appears twice, on lines {first_line} and {second_line}")


class StrictLoader(_BASE):  # type: ignore[valid-type,misc]
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` overrides by design
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKeyError(key, seen[key], line)
            except TypeError:  # an unhashable key: the base constructor says so
                break
            seen[key] = line
        result: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return result


def load(text: str) -> Any:
    """The document in `text`; raises DuplicateKeyError (a yaml.YAMLError) for a key given twice in one mapping."""
    return yaml.load(text, Loader=StrictLoader)
