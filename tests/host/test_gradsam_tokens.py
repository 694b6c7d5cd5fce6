"""Subject words -> token columns with ComfyUI's own tokenizers (tiny SD1.5 and SDXL CLIPs)."""
import pytest

import conduit  # noqa: F401  (registers conduit_pack for the imports below)
from conduit_pack.toyworld import build

import conduit_pack.patches.gradsam.tokens as tokens
import conduit_pack.patches.engine.errors as errors
NODE = "Conduit Grad-SAM Sampler"


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def clip(request):
    return build.build_clip(request.param, 1)


def hf_ids(clip, word):
    """The word's BPE ids from the HuggingFace tokenizer itself, without start/end tokens (independent path)."""
    sub = clip.tokenizer.clip_l
    return sub.tokenizer(word)["input_ids"][1:-1]


def columns(clip, prompt, subject):
    pt = tokens.prompt_tokens(clip, prompt, NODE)
    return {s.name: list(s.columns) for s in tokens.subject_tokens(pt, subject, NODE)}


def test_start_token_shifts_every_word_by_one(clip):
    # a=1 photo=2 of=3 a=4 cat=5: spaCy's index of "cat" is 4, the reference's off-by-one.
    assert columns(clip, "a photo of a cat", "cat") == {"cat": [5]}
    raw = clip.tokenize("a photo of a cat")
    for stream in raw.values():
        assert stream[0][0][0] == 49406 and stream[0][5][0] == hf_ids(clip, "cat")[0]


def test_multi_token_and_punctuated_words(clip):
    prompt = "a photo of a hippopotamus, snowboarder cat"
    with_comma = hf_ids(clip, "hippopotamus,")
    assert with_comma[-1] == hf_ids(clip, ",")[0]  # the comma is a token of the same word
    n_hippo = len(with_comma) - 1
    n_snow = len(hf_ids(clip, "snowboarder"))
    assert n_hippo > 2 and n_snow > 1  # really split words
    cols = columns(clip, prompt, "hippopotamus, snowboarder, cat")
    assert cols["hippopotamus"] == list(range(5, 5 + n_hippo))  # the comma column is left out
    start = 5 + n_hippo + 1
    assert cols["snowboarder"] == list(range(start, start + n_snow))
    assert cols["cat"] == [start + n_snow]
    stream = clip.tokenize(prompt)["l"][0]
    assert [stream[c][0] for c in cols["snowboarder"]] == hf_ids(clip, "snowboarder")


def test_repeated_words_phrases_and_weights(clip):
    prompt = "a cat and a (red car:1.3) and another Cat."
    cols = columns(clip, prompt, "cat, red car")
    assert cols["cat"] == [2, 9]
    assert cols["red car"] == [5, 6]


def test_streams_agree_and_long_prompts_use_the_second_chunk(clip):
    filler = " ".join(["grass"] * 80)
    prompt = f"a dog in {filler} with a cat"
    pt = tokens.prompt_tokens(clip, prompt, NODE)
    assert pt.length == 154
    cols = columns(clip, prompt, "cat")["cat"]
    raw = clip.tokenize(prompt)
    for stream in raw.values():
        flat = [t for chunk in stream for t in chunk]
        assert all(flat[c][0] == hf_ids(clip, "cat")[0] for c in cols)
    assert cols[0] > 77


def test_empty_subject_takes_the_nouns(clip):
    cols = columns(clip, "a photo of a deer roaming in the misty forest", "")
    assert list(cols) == ["deer", "forest"] and cols["deer"] == [5]
    with pytest.raises(errors.ConduitError, match="no word the noun rule accepts"):
        columns(clip, "the very beautiful", "")


def test_missing_subject_lists_the_prompt_words(clip):
    with pytest.raises(errors.ConduitError) as exc:
        columns(clip, "a cat on a sofa", "dog")
    text = str(exc.value)
    assert text.startswith(f"[{NODE}]") and "'dog'" in text and "a, cat, on, a, sofa" in text and "Fix:" in text
