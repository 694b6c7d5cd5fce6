"""The layout's seams hold: host differences only in engine/host.py, family knowledge only in
engine/families.py, and no technique imports another technique's modules."""
import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PATCHES = REPO / "patches"
TECHNIQUES = sorted(p.name for p in PATCHES.iterdir() if p.is_dir() and p.name not in ("engine", "__pycache__"))
HOST_MARKS = re.compile(r"patcher_extension|get_model_object|calc_cond_uncond_batch|lora_convert|sampler_helpers"
                        r"|hasattr\(comfy\.|calculate_sigmas_scheduler|process_conds|WrappersMP")
FAMILY_MARKS = re.compile(r"supported_models|==\s*[\"'](sd15|sd2|sdxl)[\"']|in \([\"']sd")


def sources(*roots):
    for root in roots:
        yield from (p for p in sorted(root.rglob("*.py")) if "__pycache__" not in p.parts)


def test_the_layout_has_the_technique_packages():
    assert TECHNIQUES == ["conditional_balance", "cow", "gradsam", "seg", "sow", "tables"]


def test_host_differences_live_only_in_the_host_seam():
    seam = PATCHES / "engine" / "host.py"
    offenders = [f"{p.relative_to(REPO)}:{i}" for p in sources(PATCHES, REPO / "nodes") if p != seam
                 for i, line in enumerate(p.read_text().splitlines(), 1) if HOST_MARKS.search(line)]
    assert not offenders, offenders
    assert HOST_MARKS.search(seam.read_text())


def test_family_knowledge_lives_only_in_the_family_seam():
    seam = PATCHES / "engine" / "families.py"
    offenders = [f"{p.relative_to(REPO)}:{i}" for p in sources(PATCHES, REPO / "nodes") if p != seam
                 for i, line in enumerate(p.read_text().splitlines(), 1) if FAMILY_MARKS.search(line)]
    assert not offenders, offenders


def imported_packages(path: Path) -> set[str]:
    """patches subpackages a module imports (relative imports resolved against its own package)."""
    package = path.relative_to(REPO).with_suffix("").parts[:-1]
    if path.name == "__init__.py":
        package = path.relative_to(REPO).parts[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(package[: len(package) - (node.level - 1)])
            target = base + (node.module.split(".") if node.module else [])
            names = [a.name for a in node.names]
            if target[:1] == ["patches"] and len(target) >= 2:
                out.add(target[1])
            elif target == ["patches"]:
                out.update(names)
    return out


def test_no_technique_imports_another_techniques_modules():
    # the tables package's public interface (its __init__: the table type) is what Conditional Balance reads
    allowed = {"conditional_balance": {"tables"}}
    for tech in TECHNIQUES:
        for path in sources(PATCHES / tech):
            others = imported_packages(path) - {"engine", tech} - allowed.get(tech, set())
            assert not others, f"{path.relative_to(REPO)} imports {sorted(others)}"
            if tech in allowed:
                text = path.read_text()
                assert not re.search(r"from \.\.tables\.\w+ import", text), f"{path.name} reaches into tables"


def test_the_engine_imports_no_technique():
    for path in sources(PATCHES / "engine"):
        others = imported_packages(path) - {"engine"}
        # the family seam maps the published tables' layer names with the tables' pure parser
        if path.name == "families.py":
            others -= {"tables"}
        assert not others, f"{path.relative_to(REPO)} imports {sorted(others)}"
