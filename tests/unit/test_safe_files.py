"""patches/safe_files.py without ComfyUI: the JSON depth pre-scan agrees with the nesting, escapes and strings
included; numbers are length-limited; only regular files are read, with a size cap."""
import json
import os
import random

import pytest

import conduit  # noqa: F401  (registers conduit_pack for the imports below)

import conduit_pack.patches.engine.safe_files as sf
import conduit_pack.patches.engine.errors as errors


def depth(x) -> int:
    if isinstance(x, dict):
        return 1 + max((depth(v) for v in x.values()), default=0)
    if isinstance(x, list):
        return 1 + max((depth(v) for v in x), default=0)
    return 0


def random_json(rng, d):
    pick = rng.random()
    if d == 0 or pick < 0.3:
        return rng.choice([1, 2.5, "a[b", 'q"[{', "back\\slash\\", "\\\"", "", None, True, "]}}"])
    if pick < 0.65:
        return [random_json(rng, d - 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["k", "[", "{\"", "\\"]) + str(i): random_json(rng, d - 1) for i in range(rng.randint(0, 3))}


def test_depth_scan_matches_the_decoded_nesting():
    rng = random.Random(0)
    for _ in range(400):
        value = random_json(rng, rng.randint(0, 9))
        text = json.dumps(value, indent=rng.choice([None, 1]))
        d = depth(value)
        assert not sf.json_depth_exceeds(text, d), text
        if d > 0:
            assert sf.json_depth_exceeds(text, d - 1), text


def test_loads_json_limits():
    assert sf.loads_json('{"a": [1, 2.5, NaN]}', "N", "f", "fix")["a"][:2] == [1, 2.5]
    for text, words in [("[" * 40 + "]" * 40, "deeper than 32"), ("9" * 5000, "5000 characters"),
                        ("-" + "1" * 200 + ".5e3", "characters"), ("", "is empty"), ("{", "not valid JSON"),
                        (b"\xff\xfe", "not UTF-8")]:
        with pytest.raises(errors.ConduitError) as exc:
            sf.loads_json(text, "Some Node", "table", "do this.")
        text = str(exc.value)
        assert text.startswith("[Some Node]") and "Fix: do this." in text and words in text


def test_read_bytes_regular_files_and_caps(tmp_path):
    f = tmp_path / "a.json"
    f.write_bytes(b"x" * 100)
    assert sf.read_bytes(f, "N", "file", "fix", 100) == b"x" * 100
    assert sf.read_bytes(f, "N", "file", "fix", 1000, count=8) == b"x" * 8
    with pytest.raises(errors.ConduitError, match="more than the 99 bytes"):
        sf.read_bytes(f, "N", "file", "fix", 99)
    with pytest.raises(errors.ConduitError, match="is a directory"):
        sf.read_bytes(tmp_path, "N", "file", "fix", 100)
    with pytest.raises(errors.ConduitError, match="holds more than"):  # /proc files report size 0
        sf.read_bytes("/proc/self/maps", "N", "file", "fix", 10)
    fifo = tmp_path / "p"
    os.mkfifo(fifo)
    with pytest.raises(errors.ConduitError, match="FIFO"):
        sf.read_bytes(fifo, "N", "file", "fix", 100)
    with pytest.raises(errors.ConduitError, match="NUL byte"):
        sf.read_bytes(str(f) + "\x00", "N", "file", "fix", 100)
    assert sf.shown("/secret/dir/name.json") == "'name.json'"


@pytest.mark.parametrize("name, ok", [("a.safetensors", True), ("A.SFT", True), ("a.pt", False), ("a.ckpt", False),
                                      ("a.pth", False), ("a.bin", False), ("a.pkl", False), ("a.gguf", False)])
def test_only_safetensors_names_pass(name, ok):
    if ok:
        assert sf.refuse_unless_safetensors(name, "N", "LoRA file") == name
    else:
        with pytest.raises(errors.ConduitError, match="pickle|not a .safetensors"):
            sf.refuse_unless_safetensors(name, "N", "LoRA file")
