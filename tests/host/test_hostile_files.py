"""Hostile files handed to the nodes that read files (Selective LoRA, Load Sensitivity Table): every one gets a
ConduitError naming the node and the fix; pickles never run, FIFOs never block, paths outside the table folders
are never opened."""
import builtins
import json
import os
import pickle
import struct
import threading

import pytest
import torch

import conduit  # noqa: F401  (registers conduit_pack for the imports below)
from tests.host.cb_helpers import hand_table
from tests.host.test_selective_lora import tiny_lora

import conduit_pack.patches.engine.errors as errors
import conduit_pack.patches.tables.table as tables
import conduit_pack.patches.tables.tables_math as tm
import conduit_pack.patches.engine.safe_files as sf
import conduit_pack.nodes.conditional_balance as cbn
import conduit_pack.nodes.tables as tnodes

LORA = "Conduit Selective LoRA"
LOADER = "Conduit Load Sensitivity Table"
HEATMAP = "Conduit Sensitivity Heatmap"


def assert_named(exc_info, node, *words):
    text = str(exc_info.value)
    assert isinstance(exc_info.value, errors.ConduitError)
    assert text.startswith(f"[{node}]") and "Fix:" in text, text
    for w in words:
        assert w in text, (w, text)
    return text


class Recorder:
    """Records every path passed to os.open, os.stat, open and io.open while active."""

    def __init__(self, monkeypatch):
        self.paths = []
        for mod, name in ((os, "open"), (os, "stat"), (builtins, "open")):
            original = getattr(mod, name)
            monkeypatch.setattr(mod, name, self._wrap(original))

    def _wrap(self, original):
        def recorded(path, *args, **kwargs):
            if isinstance(path, (str, bytes, os.PathLike)):
                self.paths.append(os.fspath(path))
            return original(path, *args, **kwargs)
        return recorded

    def touched(self, needle: str) -> list[str]:
        return [p for p in self.paths if isinstance(p, str) and needle in p]


def returns_promptly(fn, timeout=20.0):
    """fn() in a thread; (finished, exception)."""
    box = {}

    def run():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001
            box["exc"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    return not t.is_alive(), box.get("exc")


def unblock_fifo(path):
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pass


# --------------------------------------------------------------------------------------- Selective LoRA

@pytest.fixture
def lora_dir(tmp_path, monkeypatch):
    import folder_paths

    d = tmp_path / "loras"
    d.mkdir()
    real = folder_paths.get_full_path

    def full_path(kind, name):
        if kind == "loras":
            p = d / name
            return str(p) if os.path.lexists(p) else None
        return real(kind, name)

    monkeypatch.setattr(folder_paths, "get_full_path", full_path)
    return d


def apply_lora(tiny_sdxl, name):
    return cbn.ConduitSelectiveLoRA().apply(tiny_sdxl.model, name, 1.0, 0.5, "style layers",
                                            hand_table(tiny_sdxl.model))


def good_safetensors(tiny_sdxl) -> bytes:
    import safetensors.torch

    return safetensors.torch.save(tiny_lora(tiny_sdxl.model))


def header_file(header, data=b""):
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(raw)) + raw + data


def test_good_lora_still_loads(tiny_sdxl, lora_dir):
    (lora_dir / "ok.safetensors").write_bytes(good_safetensors(tiny_sdxl))
    (m,) = apply_lora(tiny_sdxl, "ok.safetensors")
    assert m.patches and not tiny_sdxl.model.patches


@pytest.mark.parametrize("case, words", [
    ("empty", ["is empty"]),
    ("short", ["only 5 bytes"]),
    ("oversized_header", ["declares a header of 9223372036854775808 bytes"]),
    ("header_beyond_file", ["truncated or not a safetensors file"]),
    ("not_json", ["has no JSON header"]),
    ("broken_json", ["is not valid JSON"]),
    ("deep_json", ["deeper than 8 levels"]),
    ("huge_number", ["a number of 5000 characters"]),
    ("header_list", ["has no JSON header"]),
    ("bad_entry", ["incompletely"]),
    ("bad_metadata", ["malformed metadata"]),
    ("truncated", ["is truncated"]),
    ("size_mismatch", ["bytes for shape"]),
    ("library_rejects", ["could not be loaded as safetensors"]),
    ("random", []),
])
def test_hostile_safetensors_get_a_named_error(tiny_sdxl, lora_dir, case, words):
    good = good_safetensors(tiny_sdxl)
    n = struct.unpack("<Q", good[:8])[0]
    data = {
        "empty": b"",
        "short": b"\x01\x02\x03\x04\x05",
        "oversized_header": struct.pack("<Q", 2 ** 63) + b"{}",
        "header_beyond_file": struct.pack("<Q", 10_000) + b'{"a": 1}',
        "not_json": header_file(b"this is not json at all"),
        "broken_json": header_file(b'{"a": [1, 2'),
        "deep_json": header_file(b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
        "huge_number": header_file(b'{"a": ' + b"7" * 5000 + b"}"),
        "header_list": header_file(b"[1, 2, 3]"),
        "bad_entry": header_file({"w": {"dtype": "F32", "shape": "4"}}),
        "bad_metadata": header_file({"__metadata__": {"a": 1}}),
        "truncated": good[: 8 + n + (len(good) - 8 - n) // 2],
        "size_mismatch": header_file({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 8),
        "library_rejects": header_file({"w": {"dtype": "X99", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
        "random": bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(3)).tolist()),
    }[case]
    (lora_dir / f"{case}.safetensors").write_bytes(data)
    with pytest.raises(errors.ConduitError) as exc:
        apply_lora(tiny_sdxl, f"{case}.safetensors")
    assert_named(exc, LORA, f"{case}.safetensors", "models/loras", *words)
    assert "SafetensorError" not in str(exc.value) and "Traceback" not in str(exc.value)


class RunsCode:
    """Unpickling this writes a marker file: what a malicious .pt/.ckpt LoRA would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


@pytest.mark.parametrize("name", ["evil.pt", "evil.ckpt", "sub/evil.PTH", "evil.bin", "evil.pkl", "evil.safetensors"])
def test_pickled_lora_is_refused_and_never_unpickled(tiny_sdxl, lora_dir, tmp_path, monkeypatch, name):
    marker = tmp_path / "marker.txt"
    payload = pickle.dumps({"lora_unet_x.lora_up.weight": RunsCode(marker)})
    (lora_dir / name).parent.mkdir(parents=True, exist_ok=True)
    (lora_dir / name).write_bytes(payload)
    loads = []
    for mod, attr in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        original = getattr(mod, attr)
        monkeypatch.setattr(mod, attr, lambda *a, _o=original, **k: (loads.append(a), _o(*a, **k))[1])
    with pytest.raises(errors.ConduitError) as exc:
        apply_lora(tiny_sdxl, name)
    text = assert_named(exc, LORA, ".safetensors")
    assert ("never unpickles" in text) and ("pickle" in text)
    assert not marker.exists() and not loads
    monkeypatch.undo()
    pickle.loads(payload)  # the payload is live: unpickling it does run code
    assert marker.read_text() == "code ran"


def test_torch_zip_renamed_to_safetensors_is_refused(tiny_sdxl, lora_dir):
    torch.save({"w": torch.zeros(2)}, str(lora_dir / "zip.safetensors"))
    with pytest.raises(errors.ConduitError) as exc:
        apply_lora(tiny_sdxl, "zip.safetensors")
    assert_named(exc, LORA, "PyTorch pickle/zip file", "never unpickles")


def test_lora_directory_fifo_and_device(tiny_sdxl, lora_dir):
    (lora_dir / "dir.safetensors").mkdir()
    with pytest.raises(errors.ConduitError) as exc:
        apply_lora(tiny_sdxl, "dir.safetensors")
    assert_named(exc, LORA, "is a directory")
    fifo = lora_dir / "pipe.safetensors"
    os.mkfifo(fifo)
    try:
        done, err = returns_promptly(lambda: apply_lora(tiny_sdxl, "pipe.safetensors"))
    finally:
        unblock_fifo(fifo)
    assert done, "a FIFO LoRA blocked the worker"
    assert isinstance(err, errors.ConduitError) and "FIFO" in str(err) and str(err).startswith(f"[{LORA}]")
    os.symlink("/dev/zero", lora_dir / "zero.safetensors")
    with pytest.raises(errors.ConduitError) as exc:
        apply_lora(tiny_sdxl, "zero.safetensors")
    assert_named(exc, LORA, "character device")
    with pytest.raises(errors.ConduitError) as exc:
        apply_lora(tiny_sdxl, "bad\x00name.safetensors")
    assert_named(exc, LORA, "NUL byte")
    with pytest.raises(errors.ConduitError) as exc:
        apply_lora(tiny_sdxl, "missing.safetensors")
    assert_named(exc, LORA, "was not found", "models/loras")


# --------------------------------------------------------------------------------------- sensitivity tables

@pytest.fixture
def table_dir(tmp_path, monkeypatch):
    """conduit_tables = tmp_path/conduit_tables only (the default folder is redirected there too)."""
    import folder_paths

    d = tmp_path / "conduit_tables"
    d.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "conduit_tables", ([str(d)], {".json"}))
    monkeypatch.setattr(folder_paths, "models_dir", str(tmp_path))
    folder_paths.filename_list_cache.pop("conduit_tables", None)
    return d


def load(name, path=""):
    return tnodes.ConduitLoadSensitivityTable().load(name, path)


def small_table_json() -> str:
    return tm.dumps_table(hand_table().to_json())


def hostile_table_files(d):
    """name -> a hostile file put into the table folder."""
    d.joinpath("deep.json").write_text("[" * 100_000 + "]" * 100_000)
    d.joinpath("bignum.json").write_text('{"schema": "conduit.sensitivity_table", "version": ' + "9" * 5000 + "}")
    d.joinpath("bigfloat.json").write_text('{"version": 1.' + "5" * 5000 + "}")
    d.joinpath("empty.json").write_text("")
    d.joinpath("binary.json").write_bytes(b"\xff\xfe\x00garbage")
    d.joinpath("dir.json").mkdir()
    with open(d / "huge.json", "wb") as fh:  # sparse: st_size above the cap
        fh.truncate(sf.MAX_TABLE_BYTES + 1)
    os.symlink("/dev/zero", d / "zero.json")
    os.symlink("/etc/passwd", d / "passwd.json")
    return {
        "deep.json": "deeper than 32 levels", "bignum.json": "a number of 5000 characters",
        "bigfloat.json": "a number of 5002 characters", "empty.json": "is empty",
        "binary.json": "not UTF-8", "dir.json": "no sensitivity table named", "huge.json": "more than the 16.0 MiB",
        "zero.json": "outside the conduit_tables folders", "passwd.json": "outside the conduit_tables folders",
    }


def test_hostile_table_files_in_the_folder_get_named_errors(table_dir, monkeypatch):
    expected = hostile_table_files(table_dir)
    listed = tnodes.ConduitLoadSensitivityTable.INPUT_TYPES()["required"]["table"][0]
    rec = Recorder(monkeypatch)
    for name, words in expected.items():
        if name != "dir.json":
            assert name in listed
        with pytest.raises(errors.ConduitError) as exc:
            load(name)
        assert_named(exc, LOADER, words, "conduit_tables")
    assert not rec.touched("/dev/zero") and not rec.touched("/etc/passwd")


def test_hostile_table_paths_through_the_library_loader(tmp_path):
    """load_table (CLI/Python API) reads the path it is given, with the same checks."""
    hostile_table_files(tmp_path)
    for name, words in [("deep.json", "deeper than 32"), ("bignum.json", "5000 characters"),
                        ("dir.json", "is a directory"), ("empty.json", "is empty"), ("huge.json", "more than")]:
        with pytest.raises(errors.ConduitError) as exc:
            tm.load_table(tmp_path / name, "N")
        assert_named(exc, "N", words)
    with pytest.raises(errors.ConduitError) as exc:
        tm.load_table("/dev/zero", "N")
    assert_named(exc, "N", "character device")
    with pytest.raises(errors.ConduitError) as exc:
        tm.load_table(str(tmp_path / "a\x00b.json"), "N")
    assert_named(exc, "N", "NUL byte")
    # a /proc file reports size 0 but is cut off by the read cap, and is not JSON
    with pytest.raises(errors.ConduitError) as exc:
        tm.load_table("/proc/self/environ", "N")
    assert_named(exc, "N", "environ")


def test_fifo_table_returns_promptly(table_dir, tmp_path):
    fifo = table_dir / "pipe.json"
    os.mkfifo(fifo)
    other = tmp_path / "pipe2.json"
    os.mkfifo(other)
    try:
        done, err = returns_promptly(lambda: load("pipe.json"))
        assert done, "a FIFO table blocked the worker"
        assert isinstance(err, errors.ConduitError) and "FIFO" in str(err) and str(err).startswith(f"[{LOADER}]")
        done, err = returns_promptly(lambda: tm.load_table(other, "N"))
        assert done and isinstance(err, errors.ConduitError) and "FIFO" in str(err)
    finally:
        unblock_fifo(fifo)
        unblock_fifo(other)


@pytest.mark.parametrize("value", ["/etc/passwd", "/proc/self/environ", "../../../../etc/passwd", "/dev/zero",
                                   "..\\..\\windows\\win.ini", "sub/../../../etc/passwd", "/tmp/a\x00b.json"])
def test_paths_are_never_opened(table_dir, monkeypatch, value):
    rec = Recorder(monkeypatch)
    # as the table name (what a client could send), as the legacy path input, and as a SENSITIVITY_TABLE literal
    with pytest.raises(errors.ConduitError) as exc:
        load(value)
    assert_named(exc, LOADER, "models/conduit_tables")
    with pytest.raises(errors.ConduitError) as exc:
        load("sdxl_style_qk", value)
    text = assert_named(exc, LOADER, "models/conduit_tables")
    assert "NUL byte" in text or "not in the conduit_tables folders" in text
    assert "is not valid JSON" not in text and "does not exist" not in text  # no probing of what exists
    with pytest.raises(errors.ConduitError) as exc:
        cbn.style_table(None, value, "Conduit Balanced Style")
    assert_named(exc, "Conduit Balanced Style", "conduit_tables")
    stem = value.replace("\\", "/").split("/")[-1]
    assert not [p for p in rec.touched(stem) if not p.startswith(str(table_dir))], rec.touched(stem)


def test_old_path_values_map_to_listed_names(table_dir, tmp_path):
    (table_dir / "sensitivity").mkdir()
    (table_dir / "sensitivity" / "analysis_00001_.json").write_text(small_table_json())
    (table_dir / "mine.json").write_text(small_table_json())
    want = hand_table().to_json()
    for old in ("sensitivity/analysis_00001_.json",              # relative to output/, the old default
                "/home/me/ComfyUI/output/sensitivity/analysis_00001_.json",
                "C:\\ComfyUI\\output\\sensitivity\\analysis_00001_.json",
                str(tmp_path / "anywhere" / "mine.json"), "mine.json"):
        table, summary = load("sdxl_style_qk", old)
        assert table.to_json() == want and "8 layers" in summary
    shipped, _ = load("sdxl_style_qk", "/old/checkout/sensitivity_tables/sdxl_style_qkv.json")
    assert shipped.features == ["q", "k", "v"] and shipped.num_layers == 70
    with pytest.raises(errors.ConduitError) as exc:
        load("sdxl_style_qk", "/data/old_tables/gone_00007_.json")
    assert_named(exc, LOADER, "'gone_00007_.json'", "models/conduit_tables", "pick it in the table list",
                 "clear the path input")
    (table_dir / "other").mkdir()
    (table_dir / "other" / "mine.json").write_text(small_table_json())
    with pytest.raises(errors.ConduitError) as exc:
        load("sdxl_style_qk", "/x/mine.json")
    assert_named(exc, LOADER, "2 files of that name", "pick the one you mean")


def test_table_saved_by_analysis_is_listed(table_dir, tmp_path):
    import folder_paths

    old = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path / "output"))
    try:
        first = tables.save_analysis_table(hand_table(), "sensitivity/analysis")
        (tmp_path / "output" / "sensitivity" / "analysis_00002_.json").write_text("{}")  # counter skips taken names
        second = tables.save_analysis_table(hand_table(), "sensitivity/analysis")
        with pytest.raises(errors.ConduitError) as exc:
            tables.save_analysis_table(hand_table(), "../../outside/x", "Conduit Sensitivity Analysis")
        assert_named(exc, "Conduit Sensitivity Analysis", "outside the output folder")
    finally:
        folder_paths.set_output_directory(old)
    assert first["name"] == os.path.join("sensitivity", "analysis_00001_.json")
    assert second["name"] == os.path.join("sensitivity", "analysis_00003_.json")
    listed = tnodes.ConduitLoadSensitivityTable.INPUT_TYPES()["required"]["table"][0]
    assert listed[:3] == tables.builtin_names() and {first["name"], second["name"]} <= set(listed)
    assert load(first["name"])[0].to_json() == hand_table().to_json()
    assert (tmp_path / "output" / first["name"]).read_bytes() == (table_dir / first["name"]).read_bytes()


def test_folder_registration_keeps_user_folders(monkeypatch, tmp_path):
    """extra_model_paths.yaml `conduit_tables: ...` lines run before the pack loads; they are kept, first."""
    import folder_paths

    user = str(tmp_path / "my_tables")
    monkeypatch.setattr(folder_paths, "models_dir", str(tmp_path / "models"))
    monkeypatch.delitem(folder_paths.folder_names_and_paths, "conduit_tables", raising=False)
    folder_paths.add_model_folder_path("conduit_tables", user)
    paths = tables.register_folder()
    default = str(tmp_path / "models" / "conduit_tables")
    assert paths == [user, default] and folder_paths.folder_names_and_paths["conduit_tables"][1] == {".json"}
    assert tables.register_folder() == [user, default] == tables.table_folders()  # new tables go to the user's
    os.makedirs(user)
    (tmp_path / "my_tables" / "a.json").write_text(small_table_json())
    (tmp_path / "my_tables" / "notes.txt").write_text("x")
    folder_paths.filename_list_cache.pop("conduit_tables", None)
    assert tables.folder_names() == ["a.json"]
    # a folder deleted after it was listed: the pinned host's cache would raise FileNotFoundError
    import shutil

    shutil.rmtree(user)
    assert tables.folder_names() == []
    assert "sdxl_style_qk" in tnodes.ConduitLoadSensitivityTable.INPUT_TYPES()["required"]["table"][0]


# --------------------------------------------------------------------------------------- size and values

def long_table(steps=30_000, n_layers=4):
    keys = [("output", i, 0) for i in range(n_layers)]
    g = torch.Generator().manual_seed(0)
    return tm.SensitivityTable("sdxl", "style", keys, list(range(steps)),
                               {"q": torch.rand(steps, n_layers, generator=g, dtype=torch.float64)})


def test_long_table_loads_summarises_and_draws_bounded(table_dir, monkeypatch):
    table = long_table()
    tm.save_table(table, table_dir / "long.json")
    assert 1_000_000 < (table_dir / "long.json").stat().st_size < sf.MAX_TABLE_BYTES  # about the sweep's 2.5 MB
    lookups = []
    original = tm.SensitivityTable.row_for
    monkeypatch.setattr(tm.SensitivityTable, "row_for", lambda self, t: (lookups.append(t), original(self, t))[1])
    loaded, summary = load("long.json")
    assert loaded.num_layers == 4 and len(loaded.timesteps) == 30_000 and "30000 timesteps" in summary
    assert not lookups  # the summary sorts all rows at once: no per-timestep lookup (that was O(T^2))
    import conduit_pack.patches.tables.heatmap as hm
    (img,) = tnodes.ConduitSensitivityHeatmap().draw(loaded, 0.43, "all")
    assert img.shape[1] <= hm.MAX_HEIGHT and img.shape[2] <= hm.MAX_WIDTH  # the sweep got 342 x 180,128 px


def test_heatmap_has_bounded_size_for_long_and_wide_tables():
    import conduit_pack.patches.tables.heatmap as hm
    for table in (long_table(30_000, 70), long_table(3, 5000)):
        (img,) = tnodes.ConduitSensitivityHeatmap().draw(table, 0.43, "all")
        assert img.shape[0] == 1 and img.shape[1] <= hm.MAX_HEIGHT and img.shape[2] <= hm.MAX_WIDTH
        assert img.shape[1] > 100 and img.shape[2] > 100
    # the cut of averaged columns is still drawn: white contour pixels exist
    assert (img[0] == 1.0).all(dim=-1).sum() > 0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), -0.5, 201.0, 1e300, -9.2e18])
def test_heatmap_lambda_out_of_range_is_a_named_error(value):
    with pytest.raises(errors.ConduitError) as exc:
        tnodes.ConduitSensitivityHeatmap().draw(hand_table(), value, "all")
    assert_named(exc, HEATMAP, "lambda_s must be a finite number from 0 to 200")


def test_heatmap_of_extreme_scores_draws():
    keys = [("output", i, 0) for i in range(3)]
    table = tm.SensitivityTable("sdxl", "style", keys, [5, 9], {
        "q": torch.tensor([[1.7e308, -1.7e308, 0.0], [1e300, 5.0, -1e307]], dtype=torch.float64)})
    (img,) = tnodes.ConduitSensitivityHeatmap().draw(table, 0.43, "q")
    assert torch.isfinite(img).all() and img.shape[1] > 100
    tm.summary(table)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.1, 1.5])
def test_conditional_balance_strengths_out_of_range_are_named_errors(tiny_sdxl, lora_dir, value):
    """ComfyUI's min/max validation lets NaN through; the nodes name the input instead of a raw ValueError."""
    (lora_dir / "ok.safetensors").write_bytes(good_safetensors(tiny_sdxl))
    with pytest.raises(errors.ConduitError) as exc:
        cbn.ConduitSelectiveLoRA().apply(tiny_sdxl.model, "ok.safetensors", 1.0, value, "style layers",
                                         hand_table(tiny_sdxl.model))
    assert_named(exc, LORA, "style_strength must be a finite number from 0 to 1")
    with pytest.raises(errors.ConduitError) as exc:
        cbn.ConduitBalancedStyle().patch(
            tiny_sdxl.model, value, True, True, True, 1.0, 0.0, 0.0, 1.0, 0, 0,
            reference_latent={"samples": torch.zeros(1, 4, 8, 8)}, sensitivity_table=hand_table(tiny_sdxl.model))
    assert_named(exc, "Conduit Balanced Style", "style_strength must be a finite number")
    with pytest.raises(errors.ConduitError) as exc:
        cbn.ConduitControlNetTimestepGate().gate([], [], value, False, False)
    assert_named(exc, "Conduit ControlNet Timestep Gate", "control_balance must be a finite number")
    if value != value:
        with pytest.raises(errors.ConduitError) as exc:
            cbn.ConduitSelectiveLoRA().apply(tiny_sdxl.model, "ok.safetensors", value, 0.5, "style layers",
                                             hand_table(tiny_sdxl.model))
        assert_named(exc, LORA, "strength must be a finite number")
