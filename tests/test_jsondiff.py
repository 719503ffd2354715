"""JSON changes by path: the operations are a JSON Patch (RFC 6902) that turns the old document into the new one."""
from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest

from livedata.jsondiff import operations, pointer


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def apply(document: Any, patch: list[dict[str, Any]]) -> Any:
    """RFC 6902's add, remove, replace and test, enough to check ours (a failed test raises AssertionError)."""
    document = copy.deepcopy(document)
    for operation in patch:
        steps = [step.replace("~1", "/").replace("~0", "~") for step in operation["path"].split("/")[1:]]
        if not steps:
            if operation["op"] == "test":
                assert canonical(document) == canonical(operation["value"])
            else:
                document = operation["value"]
            continue
        parent = document
        for step in steps[:-1]:
            parent = parent[int(step)] if isinstance(parent, list) else parent[step]
        key: Any = int(steps[-1]) if isinstance(parent, list) else steps[-1]
        if operation["op"] == "test":
            assert canonical(parent[key]) == canonical(operation["value"]), operation
        elif operation["op"] == "remove":
            del parent[key]
        elif operation["op"] == "replace":
            parent[key] = operation["value"]
        elif isinstance(parent, list):
            assert 0 <= key <= len(parent), operation
            parent.insert(key, operation["value"])
        else:
            parent[key] = operation["value"]
    return document


def random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.4:
        return rng.choice([0, 1, 1.0, True, False, None, "a", "b/~", 2, ""])
    if roll < 0.7:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 6))]
    return {rng.choice(["a", "b", "c/d", "~e"]): random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def mutated(rng: random.Random, value: Any) -> Any:
    if isinstance(value, list):
        value = list(value)
        for _ in range(rng.randint(0, 3)):
            roll = rng.random()
            if roll < 0.3 and value:
                del value[rng.randrange(len(value))]
            elif roll < 0.6:
                value.insert(rng.randint(0, len(value)), random_value(rng, 2))
            elif value:
                index = rng.randrange(len(value))
                value[index] = mutated(rng, value[index])
        return value
    if isinstance(value, dict):
        value = {key: mutated(rng, item) if rng.random() < 0.4 else item for key, item in value.items()
                 if rng.random() > 0.1}  # fmt: skip
        if rng.random() < 0.3:
            value[rng.choice(["a", "z", "c/d"])] = random_value(rng, 2)
        return value
    return random_value(rng, 3) if rng.random() < 0.5 else value


def test_the_operations_turn_the_old_document_into_the_new_one():
    rng = random.Random(24)
    for _ in range(3000):
        old = random_value(rng)
        new = mutated(rng, old)
        assert canonical(apply(old, list(operations(old, new)))) == canonical(new), (old, new)


def test_one_insertion_into_a_long_list_is_one_operation():
    old = {"items": [{"id": n} for n in range(10_000)]}
    new = copy.deepcopy(old)
    new["items"].insert(3, {"id": "new"})
    del new["items"][9000]
    assert list(operations(old, new)) == [
        {"op": "add", "path": "/items/3", "value": {"id": "new"}},
        {"op": "test", "path": "/items/9000", "value": {"id": 8999}},
        {"op": "remove", "path": "/items/9000"},
    ]


@pytest.mark.parametrize(("old", "new"), [(1, True), (1, 1.0), (0, False), ([1], [True]), ({"a": 1}, {"a": 1.0})])
def test_values_python_calls_equal_are_changes_in_json(old, new):
    assert list(operations(old, new))


def test_key_order_and_spacing_are_not_changes():
    assert list(operations(json.loads('{"a": 1, "b": [1, 2]}'), json.loads('{"b":[1,2],"a":1}'))) == []


def test_paths_are_escaped_as_rfc_6901_says():
    assert pointer("", "a/b~c") == "/a~1b~0c"
    assert list(operations({"a/b~c": 1}, {"a/b~c": 2}))[1] == {"op": "replace", "path": "/a~1b~0c", "value": 2}
    whole = [{"op": "test", "path": "", "value": 1}, {"op": "replace", "path": "", "value": [1]}]
    assert list(operations(1, [1])) == whole
