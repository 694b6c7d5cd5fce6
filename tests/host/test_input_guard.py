"""The one input guard: every declared numeric, choice and boolean input of every Conduit node is checked
before the node does any work, and the error names the node, the input and the fix."""
import math

import pytest

import conduit  # noqa: F401  (registers conduit_pack for the imports below)

import conduit_pack.nodes as nodes
import conduit_pack.nodes._guard as guard
import conduit_pack.patches.engine.errors as errors


def cases():
    for node_id, cls in sorted(nodes.NODE_CLASS_MAPPINGS.items()):
        for name, (kind, options) in guard.declared_inputs(cls).items():
            if kind in ("FLOAT", "INT"):
                yield node_id, name, math.nan
                yield node_id, name, math.inf
                yield node_id, name, -math.inf
                if options.get("max") is not None:
                    yield node_id, name, options["max"] + 1
                if options.get("min") is not None:
                    yield node_id, name, options["min"] - 1
            elif isinstance(kind, (list, tuple)) and kind:
                yield node_id, name, "no such choice \u2603"
            elif kind == "BOOLEAN":
                yield node_id, name, "yes"


CASES = list(cases())


def test_every_node_is_declared_and_guarded():
    assert len(nodes.NODE_CLASS_MAPPINGS) >= 20
    for node_id, cls in nodes.NODE_CLASS_MAPPINGS.items():
        assert getattr(getattr(cls, cls.FUNCTION), "_conduit_guarded", False), node_id
        assert nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id] == cls.DISPLAY_NAME
        assert cls.CATEGORY.startswith("conduit/")
    assert len(CASES) > 150


@pytest.mark.parametrize("node_id, name, value", CASES, ids=[f"{n}.{i}={v!r}" for n, i, v in CASES])
def test_bad_input_is_refused_before_any_work(node_id, name, value):
    cls = nodes.NODE_CLASS_MAPPINGS[node_id]
    node = cls()
    # other inputs keep their defaults, and models, images and the like are objects no node could work with:
    # the guard must stop the call before the node touches them
    kwargs = good_values(cls, fill=object())
    kwargs[name] = value
    with pytest.raises(errors.ConduitError) as err:
        getattr(node, cls.FUNCTION)(**kwargs)
    text = str(err.value)
    assert text.startswith(f"[{cls.DISPLAY_NAME}]") and f"'{name}'" in text and "Fix:" in text


def good_values(cls, fill=None):
    good = {}
    for name, (kind, options) in guard.declared_inputs(cls).items():
        if "default" in options:
            good[name] = options["default"]
        elif isinstance(kind, (list, tuple)) and kind:
            good[name] = kind[0]
        elif fill is not None:
            good[name] = fill
    return good


def test_good_values_pass_the_guard():
    for cls in nodes.NODE_CLASS_MAPPINGS.values():
        guard.check_inputs(cls, cls.DISPLAY_NAME, good_values(cls))  # raises on a bad default
