"""Where workflows live: the editor workflows (templates) in example_workflows/ with their thumbnails, their API
twins in workflows/api/, and nothing else as workflows/*.json, which ComfyUI's template browser would list."""
from conduit import workflow
from conduit.host import REPO_ROOT


def test_templates_and_api_twins_pair_up_and_the_browser_sees_only_templates():
    templates = {p.stem for p in workflow.EXAMPLES_DIR.glob("*.json")}
    twins = set(workflow.short_names())
    assert len(templates) >= 8
    assert templates == twins, f"unpaired: {sorted(templates ^ twins)}; run python -m conduit ui <name>"
    stray = sorted(p.name for p in (REPO_ROOT / "workflows").glob("*.json"))
    assert not stray, (f"{stray}: ComfyUI's template browser lists every workflows/*.json; put API twins in "
                       "workflows/api/ and editor workflows in example_workflows/")
    assert not [p.name for p in workflow.EXAMPLES_DIR.glob("*.api.json")]


def test_every_template_has_its_thumbnail():
    templates = {p.stem for p in workflow.EXAMPLES_DIR.glob("*.json")}
    thumbs = {p.stem for p in workflow.EXAMPLES_DIR.glob("*.jpg")}
    assert templates == thumbs, (f"without a thumbnail: {sorted(templates - thumbs)}, without a template: "
                                 f"{sorted(thumbs - templates)}; run python -m conduit thumbnails")
