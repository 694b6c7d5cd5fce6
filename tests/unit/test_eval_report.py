"""The eval's Markdown tables, the quality suite's texture confusion and the texture diagnostic's captions
(pure: no ComfyUI)."""
from eval import quality, report


def test_rows_of_different_columns_get_their_own_tables():
    text = report.markdown_table([{"word": "red", "accuracy": 1.0}, {"word": "blue", "accuracy": 0.5},
                                  {"caption": "a red circle", "seed": 0}])
    first, second = text.split("\n\n")
    assert first.splitlines()[0] == "| word | accuracy |" and "| blue | 0.500 |" in first
    assert second.splitlines()[0] == "| caption | seed |" and second.splitlines()[2] == "| a red circle | 0 |"


def test_texture_confusion_counts_what_each_asked_texture_was_read_as():
    read = ("dotted", "solid", "solid", "speckled")
    rows = [{"asked": ("red", "dotted", "star", "gray"), "texture": t} for t in read]
    rows.append({"asked": ("red", "striped", "star", "gray"), "texture": "striped"})
    table = {r["asked_texture"]: r for r in quality.texture_confusion(rows)}
    assert set(table) == {"dotted", "striped"}
    assert (table["dotted"]["read_solid"], table["dotted"]["read_dotted"], table["dotted"]["n"]) == (0.5, 0.25, 4)
    assert table["dotted"]["read_speckled"] == 0.25 and table["dotted"]["read_checkered"] == 0.0
    assert table["striped"]["read_striped"] == 1.0


def test_texture_diagnostic_uses_training_captions_of_one_texture_on_gray():
    from conduit_pack.toyworld import world
    from eval import diagnose_texture

    caps = diagnose_texture.texture_captions("dotted", 1)
    assert caps and all(t == "dotted" and b == "gray" and not world.held_out(c, t, s) for c, t, s, b in caps)
    assert len(caps) == sum(1 for c, t, s in world.all_triples("train") if t == "dotted")
    assert diagnose_texture.texture_captions("dotted", 3) == caps[::3]


def test_texture_diagnostic_kept_share_counts_only_the_asked_texture():
    from eval import diagnose_texture

    assert diagnose_texture.kept_share(["dotted", "speckled", "dotted", "solid"], "dotted") == 0.5
    assert diagnose_texture.kept_share(["solid"], "dotted") == 0.0
