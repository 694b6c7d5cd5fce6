"""The editor's help pages (web/docs/<NodeId>.md) are current: regenerated from the declarations and docs/
they equal the committed files, one per node and no stale ones, and each says what every input does."""
import conduit  # noqa: F401  (registers conduit_pack for the imports below)

import conduit_pack.nodes as nodes
from conduit import help_pages

FIX = "run `python -m conduit help-pages` and commit web/docs/"


def test_help_pages_are_current():
    pages = help_pages.render_all(nodes.declared_nodes())
    committed = {p.name: p.read_text(encoding="utf-8") for p in help_pages.HELP_DIR.glob("*.md")}
    assert set(pages) == {f"{node_id}.md" for node_id in nodes.NODE_CLASS_MAPPINGS}
    assert set(committed) == set(pages), f"missing or stale pages: {sorted(set(committed) ^ set(pages))}; {FIX}"
    stale = [name for name, text in pages.items() if committed[name] != text]
    assert not stale, f"out of date: {stale}; {FIX}"


def test_every_input_and_output_is_on_its_page():
    pages = help_pages.render_all(nodes.declared_nodes())
    for node_id, cls in nodes.NODE_CLASS_MAPPINGS.items():
        text = pages[f"{node_id}.md"]
        assert text.splitlines()[2] == f"# {cls.DISPLAY_NAME}" and cls.DESCRIPTION.strip() in text
        for section in ("required", "optional"):
            for name, entry in (cls.INPUT_TYPES().get(section) or {}).items():
                opts = entry[1] if len(entry) > 1 else {}
                label = f"{name} (optional)" if section == "optional" else name
                row = next((line for line in text.splitlines() if line.startswith(f"| `{label}` |")), None)
                assert row is not None, (node_id, name)
                assert help_pages.cell(opts.get("tooltip", "")) in row, (node_id, name)
                if "default" in opts:
                    assert help_pages.cell(help_pages.value_text(opts["default"])) in row, (node_id, name)
        for tip in cls.OUTPUT_TOOLTIPS:
            assert help_pages.cell(tip) in text, node_id


def test_technique_nodes_name_their_paper_and_docs_section():
    pages = help_pages.render_all(nodes.declared_nodes())
    papers = help_pages.technique_papers()
    assert len(papers) >= 5
    for node_id, cls in nodes.NODE_CLASS_MAPPINGS.items():
        if cls.CATEGORY.split("/")[1] in ("utils", "demo"):
            continue
        text = pages[f"{node_id}.md"]
        assert "Technique paper: " in text and "## From the docs: " in text, node_id
        assert "](docs/" not in text and "](../" not in text, node_id  # links work outside the repository


def test_pictures_are_the_template_thumbnails_and_are_committed():
    import re

    pages = help_pages.render_all(nodes.declared_nodes())
    shown = 0
    for name, text in pages.items():
        for rel in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
            path = help_pages.HELP_DIR / rel
            assert path.is_file(), f"{name} shows {rel}, which is not committed; {FIX}"
            thumb = help_pages.EXAMPLES / path.name
            if thumb.is_file():
                assert path.read_bytes() == thumb.read_bytes(), f"{rel} is an old thumbnail; {FIX}"
            shown += 1
    assert shown >= 8  # the nodes of the templates the demo model runs
