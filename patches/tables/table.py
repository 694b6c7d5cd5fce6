"""Sensitivity tables for nodes: shipped tables, lookup by family, and validation against a loaded model.

The data type, JSON parsing and ranking live in tables_math (no comfy imports); this module adds what
needs the pack's files or a ModelPatcher. Injection nodes typically do:

    table = table_for_family(model_family(model, NODE), "style_qk", NODE)   # or a SENSITIVITY_TABLE input
    validate_against(table, model, NODE)
    keys = table.top_layers("q", timestep, lambda_s)
"""
from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from ..engine.errors import ConduitError
from ..engine.safe_files import MAX_TABLE_BYTES, check_path_text, read_json, shown
from .tables_math import (  # noqa: F401  (re-exported: the table API lives here for node code)
    ANALYSIS_NODE, DIMENSIONS, FEATURES, FIX_REGENERATE, SCHEMA_ID, TABLE_VERSION, LayerKey, SensitivityTable,
    check_lambda, comfy_order, diffusers_attn1_key, key_short, load_table, parse_table, save_table, short_text,
    summary,
)

SOCKET = "SENSITIVITY_TABLE"  # ComfyUI socket type carrying a SensitivityTable between nodes
# the pack root is three levels up: <pack>/patches/tables/table.py
TABLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                         "sensitivity_tables")
KINDS = ("style_qk", "style_qkv")
FOLDER = "conduit_tables"  # the folder_paths name of the table folders (models/conduit_tables by default)
EXTENSIONS = {".json"}
FIX_FOLDER = ("put the table file into ComfyUI's models/conduit_tables folder (or a conduit_tables folder listed in "
              "extra_model_paths.yaml), refresh the page and pick it in the table list of Conduit Load Sensitivity "
              "Table.")


def builtin_names() -> list[str]:
    """Names of the shipped tables (file stems in sensitivity_tables/), e.g. 'sdxl_style_qk'."""
    if not os.path.isdir(TABLE_DIR):
        return []
    return sorted(f[:-5] for f in os.listdir(TABLE_DIR) if f.endswith(".json") and not f.startswith("schema"))


@lru_cache(maxsize=None)
def _builtin_data(name: str) -> Any:
    path = os.path.join(TABLE_DIR, f"{name}.json")
    return read_json(path, ANALYSIS_NODE, "shipped sensitivity table", "reinstall the Conduit pack.")


def builtin_table(name: str, node: str = ANALYSIS_NODE) -> SensitivityTable:
    """A fresh copy of a shipped table (callers may modify it)."""
    if name not in builtin_names():
        raise ConduitError(node, f"no shipped sensitivity table named {short_text(repr(name), 60)}.",
                           f"use one of {', '.join(builtin_names()) or '(none found)'}, or " + FIX_REGENERATE)
    return parse_table(copy.deepcopy(_builtin_data(name)), node)


def table_for_family(family: str, kind: str = "style_qk", node: str = ANALYSIS_NODE) -> SensitivityTable:
    """The shipped table of this kind for a model family; a ConduitError pointing at the analysis node if none."""
    if kind not in KINDS:
        raise ConduitError(node, f"unknown table kind {kind!r}.", f"use one of {', '.join(KINDS)}.")
    name = f"{family}_{kind}"
    if name not in builtin_names():
        have = ", ".join(n for n in builtin_names() if n.endswith(kind)) or "none"
        raise ConduitError(
            node, f"no shipped {kind} sensitivity table for model family {family!r} (shipped: {have}).",
            f"run the {ANALYSIS_NODE} node (or `python -m conduit analyze`) on this model and connect its "
            "SENSITIVITY_TABLE output, or load the table file it writes.")
    return builtin_table(name, node)


# ---- the conduit_tables folder (ComfyUI folder_paths) ------------------------------------------------------

def register_folder() -> list[str]:
    """Register the conduit_tables folder with ComfyUI's folder_paths (idempotent); returns its folders.

    Folders the user listed in extra_model_paths.yaml (`conduit_tables: /path`, read before the pack loads)
    come first, in their order, then the default <models dir>/conduit_tables. New tables are written into the
    first folder: a configured (e.g. shared) folder when there is one, else models/conduit_tables. Only .json
    files are listed (the pinned 2024 host creates a yaml-only entry with no extension filter)."""
    import folder_paths

    default = os.path.join(folder_paths.models_dir, FOLDER)
    entry = folder_paths.folder_names_and_paths.get(FOLDER)
    paths = list(entry[0]) if entry else []
    if default not in paths:
        paths.append(default)
    if entry is None or list(entry[0]) != paths or set(entry[1]) != EXTENSIONS:
        folder_paths.folder_names_and_paths[FOLDER] = (paths, set(EXTENSIONS))
    return list(paths)


def table_folders() -> list[str]:
    """The conduit_tables folders, in ComfyUI's order (the first is where new tables are written)."""
    register_folder()
    import folder_paths

    return folder_paths.get_folder_paths(FOLDER)


def folder_names() -> list[str]:
    """Table files in the conduit_tables folders, as ComfyUI lists them (relative paths, e.g. 'sens/t_00001_.json')."""
    register_folder()
    import folder_paths

    try:
        names = folder_paths.get_filename_list(FOLDER)
    except OSError:  # the pinned host's cache stats folders it saw before: one deleted since raises
        folder_paths.filename_list_cache.pop(FOLDER, None)
        try:
            names = folder_paths.get_filename_list(FOLDER)
        except OSError:
            names = []
    return [n for n in names if "\x00" not in n]


def table_names() -> list[str]:
    """What the Load Sensitivity Table node offers: the shipped names, then the conduit_tables files."""
    shipped = builtin_names()
    return shipped + [n for n in folder_names() if n not in shipped]


def _inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # different drives
        return False


def _is_relative_name(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return not (os.path.isabs(name) or name.startswith(("/", "\\")) or ".." in parts
                or (len(name) > 1 and name[1] == ":"))


def table_path(name: str, node: str) -> str:
    """The real path of a listed conduit_tables file; it must lie inside one of the folders (symlinks resolved).

    Never opens anything: the caller reads the file with the safe_files checks."""
    check_path_text(name, node, "sensitivity table", FIX_FOLDER)
    if not _is_relative_name(name):
        raise ConduitError(node, f"sensitivity table {shown(name)} is given as a path; tables are picked by name "
                           "from the list, and no absolute or '..' path is opened.", FIX_FOLDER)
    if name not in folder_names():
        raise ConduitError(node, f"there is no sensitivity table named {short_text(repr(name), 80)} in the "
                           "conduit_tables folders or among the shipped tables.", FIX_FOLDER)
    for folder in table_folders():
        root = os.path.realpath(folder)
        candidate = os.path.join(folder, os.path.normpath(name))
        if not os.path.lexists(candidate):
            continue
        real = os.path.realpath(candidate)
        if not _inside(real, root):
            raise ConduitError(node, f"sensitivity table {shown(name)} links to a file outside the conduit_tables "
                               "folders; it is not read.", "copy the file itself into the folder.")
        return real
    raise ConduitError(node, f"sensitivity table {short_text(repr(name), 80)} disappeared from the conduit_tables "
                       "folders.", FIX_FOLDER)


def load_named_table(name: str, node: str = ANALYSIS_NODE) -> SensitivityTable:
    """A shipped table by name, or a listed conduit_tables file; nothing else is ever opened."""
    if isinstance(name, str) and name in builtin_names():
        return builtin_table(name, node)
    path = table_path(name, node)
    data = read_json(path, node, "sensitivity table file", FIX_FOLDER + " Or " + FIX_REGENERATE,
                     max_bytes=MAX_TABLE_BYTES)
    return parse_table(data, node)


def legacy_name(value: str, node: str) -> str:
    """The listed table name an old workflow's `path` value stands for (the path itself is never opened).

    Exact relative names of conduit_tables files win (analysis tables keep their output-relative name in the
    folder), then a file of the same base name in the folders, or a shipped table of that stem; else a
    ConduitError saying where to put the file."""
    text = check_path_text(value, node, "legacy table path", FIX_FOLDER).strip()
    norm = text.replace("\\", "/")
    listed = folder_names()
    if _is_relative_name(text):
        rel = os.path.normpath(norm)
        if rel in listed:
            return rel
    base = os.path.basename(norm.rstrip("/"))
    stem = base[:-5] if base.lower().endswith(".json") else base
    matches = [n for n in listed if os.path.basename(n) == base]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConduitError(node, f"the old path input names {shown(base)}, and the conduit_tables folders hold "
                           f"{len(matches)} files of that name ({', '.join(short_text(m, 60) for m in matches[:4])}).",
                           "pick the one you mean in the table list and clear the path input.")
    if stem in builtin_names():
        return stem
    raise ConduitError(node, f"the old path input names {shown(base)}, which is not in the conduit_tables folders; "
                       "tables are no longer opened from arbitrary paths.",
                       FIX_FOLDER + " Then clear the path input.")


def resolve_table(source: Any, node: str = ANALYSIS_NODE) -> SensitivityTable:
    """What a node input may carry: a SensitivityTable, a decoded dict, or a table name (shipped or listed).

    A string is never treated as a path: ComfyUI passes a literal value given for a custom socket straight to
    the node, so a client could otherwise make the node open any file."""
    if isinstance(source, SensitivityTable):
        return source
    if isinstance(source, Mapping):
        return parse_table(source, node)
    if isinstance(source, str):
        return load_named_table(source, node)
    raise ConduitError(node, f"expected a sensitivity table, got {type(source).__name__}.",
                       "connect the table output of a Conduit table node.")


MAX_PREFIX_CHARS = 1000  # a table name is a path under the tables folder; file systems allow 255 per name
MAX_NAME_CHARS = 200  # leaves room for the counter and the suffix


def save_analysis_table(table: SensitivityTable, filename_prefix: str, node: str = ANALYSIS_NODE) -> dict:
    """Write a new table as <prefix>_NNNNN_.json into the first conduit_tables folder (so it is listed by Load
    Sensitivity Table) and the same file into ComfyUI's output folder (downloadable through /view). The first
    folder is models/conduit_tables unless extra_model_paths.yaml lists conduit_tables folders.

    The prefix, counter and subfolder follow ComfyUI's image naming (get_save_image_path); the counter is the
    next one free in both folders. Returns {name, filename, subfolder, output_path, table_path}."""
    import folder_paths

    out_dir = folder_paths.get_output_directory()
    if "\x00" in filename_prefix:
        raise ConduitError(node, "filename_prefix contains a NUL byte.",
                           "use a plain prefix such as sensitivity/table.")
    parts = filename_prefix.replace("\\", "/").split("/")
    if len(filename_prefix) > MAX_PREFIX_CHARS or any(len(part) > MAX_NAME_CHARS for part in parts):
        raise ConduitError(node, f"filename_prefix is too long ({len(filename_prefix)} characters).",
                           f"use a prefix of at most {MAX_PREFIX_CHARS} characters, with folder and file names of "
                           f"at most {MAX_NAME_CHARS}, such as sensitivity/table.")
    try:
        out_folder, stem, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, out_dir)
    except Exception:  # noqa: BLE001  (ComfyUI raises a plain Exception for prefixes outside output/)
        raise ConduitError(node, f"filename_prefix {short_text(repr(filename_prefix), 80)} points outside the output "
                           "folder.", "use a relative prefix such as sensitivity/table.") from None
    root = table_folders()[0]
    tables_folder = os.path.abspath(os.path.join(root, subfolder))
    if not _inside(tables_folder, os.path.abspath(root)):
        raise ConduitError(node, f"filename_prefix {short_text(repr(filename_prefix), 80)} points outside the "
                           "conduit_tables folder.", "use a relative prefix such as sensitivity/table.")
    while True:
        filename = f"{stem}_{counter:05}_.json"
        if not (os.path.lexists(os.path.join(out_folder, filename))
                or os.path.lexists(os.path.join(tables_folder, filename))):
            break
        counter += 1
    table_file = os.path.join(tables_folder, filename)
    output_file = os.path.join(out_folder, filename)
    try:
        save_table(table, table_file)
        save_table(table, output_file)
    except OSError as exc:
        raise ConduitError(node, f"could not write the table file {filename} ({exc.strerror or type(exc).__name__}).",
                           "check that ComfyUI's output and models/conduit_tables folders are writable and have "
                           "room.") from None
    return {"name": os.path.join(subfolder, filename) if subfolder else filename, "filename": filename,
            "subfolder": subfolder, "output_path": output_file, "table_path": table_file}


def validate_against(table: SensitivityTable, model_patcher: Any, node: str = ANALYSIS_NODE,
                     kinds: tuple[str, ...] = ("unet",)) -> dict[LayerKey, int]:
    """Check the table was made for this model; returns {layer key: table column}.

    The family and the exact set of self-attention keys must match: a table for a different UNet
    (another family, or a pruned/tiny model with other layers) would select the wrong layers silently.
    `kinds` are the model kinds the calling node handles ("unet", "dit"); a DiT family accepts the table ids
    of its models (SD3 takes "sd35l" and "sd35m" tables, whose block counts differ: the key check tells them apart).
    """
    from ..engine.families import FAMILY_NAMES, family_of

    family = family_of(model_patcher, node, kinds)
    fix = (f"use a table made for this model: run the {ANALYSIS_NODE} node on it and connect its "
           "SENSITIVITY_TABLE output, or pick the shipped table for its family.")
    if not family.accepts_table(table.family):
        raise ConduitError(node, f"the sensitivity table is for model family {short_text(repr(table.family), 60)} "
                           f"but the model is {FAMILY_NAMES.get(family.id, family.id)} ({family.id!r}).", fix)
    model_keys = [layer.key for layer in family.attention_layers(model_patcher.model.diffusion_model)]
    model_set, table_set = set(model_keys), set(table.layer_keys)
    if model_set != table_set:
        missing = [key_short(k) for k in model_keys if k not in table_set]
        extra = [key_short(k) for k in table.layer_keys if k not in model_set]
        what = "attention blocks" if family.kind == "dit" else "self-attention layers"
        detail = f"the table has {table.num_layers} layers, the model has {len(model_keys)} {what}"
        if missing:
            detail += f"; not in the table: {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}"
        if extra:
            detail += f"; not in the model: {', '.join(extra[:6])}{' ...' if len(extra) > 6 else ''}"
        raise ConduitError(node, f"the sensitivity table does not match this model's layers ({detail}).", fix)
    return {k: i for i, k in enumerate(table.layer_keys)}


def shipped_table_for(model_patcher: Any, node: str, kinds: tuple[str, ...],
                      kind: str = "style_qk") -> SensitivityTable:
    """The shipped table a style node uses when none is connected.

    UNets: the table of this kind for the family (SDXL). DiTs: the shipped table whose family the model's family
    accepts and whose block keys are exactly the model's, with q, k and v scores (SD3.5 Large: sd35l_style_qkv).
    Flux, SD3 Medium and SD3.5 Medium have no published table: the error says how to make one."""
    from ..engine.families import family_of

    family = family_of(model_patcher, node, kinds)
    if family.kind != "dit":
        return table_for_family(family.id, kind, node)
    keys = {layer.key for layer in family.attention_layers(model_patcher.model.diffusion_model)}
    for name in builtin_names():
        table = builtin_table(name, node)
        if family.accepts_table(table.family) and set(table.layer_keys) == keys and "v" in table.scores:
            return table
    raise ConduitError(
        node, f"no shipped sensitivity table fits this {family.name} model ({len(keys)} attention blocks; the only "
        "published DiT table is SD3.5 Large's, for its 38 joint blocks).",
        f"make one: run the {ANALYSIS_NODE} node on this model with a few style groups (one per line, 2+ samples "
        "each) and connect its SENSITIVITY_TABLE output to sensitivity_table, or load the table file it writes "
        "with Conduit Load Sensitivity Table.")
