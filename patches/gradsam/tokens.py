"""Map prompt words to the token columns of the text encoder's output, with ComfyUI's own tokenizer.

clip.tokenize(text, return_word_ids=True) gives, per encoder stream ("l"; "g" and "l" for SDXL; "h" for
SD2), chunks of (token, weight, word_id). Column = offset of the chunk + index inside it, so the start
token (column 0 of every chunk) and words split into several tokens are accounted for. The reference
used spaCy word indices as columns, which is off by one (start token) and wrong for split words.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from . import words as words_lib
from ..engine.errors import ConduitError

log = logging.getLogger(__name__)

STREAM_ORDER = ("l", "g", "h")


@dataclass
class PromptWord:
    text: str
    norm: str
    columns: list[int]


@dataclass
class PromptTokens:
    words: list[PromptWord]
    length: int  # columns of this prompt's encoding (chunks x chunk length)

    @property
    def norms(self) -> list[str]:
        return [w.norm for w in self.words]


@dataclass(frozen=True)
class Subject:
    name: str
    columns: tuple[int, ...]


def _stream_tokenizer(tokenizer: Any, key: str) -> Any:
    for name in (f"clip_{key}", key):
        sub = getattr(tokenizer, name, None)
        if sub is not None and hasattr(sub, "inv_vocab"):
            return sub
    return None


def _decode(sub: Any, ids: list[int]) -> str:
    pieces = [sub.inv_vocab.get(i, "") for i in ids]
    text = "".join(pieces)
    hf = getattr(sub, "tokenizer", None)
    if hf is not None and hasattr(hf, "convert_tokens_to_string"):
        try:  # undoes CLIP's byte-level encoding of non-ASCII characters
            text = hf.convert_tokens_to_string(pieces)
        except Exception:  # noqa: BLE001  (a tokenizer without byte decoding: keep the raw pieces)
            pass
    return text.replace("</w>", " ").strip()


def _split_words(sub: Any, cols: list[int], tok: list[int]) -> list[PromptWord]:
    """One word-id group -> words. Newer hosts give a whole weighted segment one id, older ones one per
    space-separated word; CLIP's BPE ends every word with '</w>', which splits both the same way.
    Punctuation-only words ("," "." split off by CLIP) are not words a subject can name."""
    out: list[PromptWord] = []
    cur_cols: list[int] = []
    cur_tok: list[int] = []
    for i, (c, t) in enumerate(zip(cols, tok)):
        cur_cols.append(c)
        cur_tok.append(t)
        if sub.inv_vocab.get(t, "").endswith("</w>") or i == len(tok) - 1:
            text = _decode(sub, cur_tok)
            if any(ch.isalnum() for ch in text):
                out.append(PromptWord(text, words_lib.normalize(text), cur_cols))
            cur_cols, cur_tok = [], []
    return out


def _stream_words(chunks: list, sub: Any) -> tuple[list[PromptWord], int]:
    cols: dict[int, list[int]] = {}
    ids: dict[int, list[int]] = {}
    offset = 0
    for chunk in chunks:
        for i, item in enumerate(chunk):
            token, word_id = item[0], item[2]
            if word_id <= 0:
                continue
            cols.setdefault(word_id, []).append(offset + i)
            ids.setdefault(word_id, []).append(token if isinstance(token, int) else -1)
        offset += len(chunk)
    out: list[PromptWord] = []
    for word_id in sorted(cols):
        if sub is None or any(t < 0 for t in ids[word_id]):
            out.append(PromptWord("<embedding>", "<embedding>", cols[word_id]))
        else:
            out.extend(_split_words(sub, cols[word_id], ids[word_id]))
    return out, offset


def prompt_tokens(clip: Any, text: str, node: str) -> PromptTokens:
    """Words of the prompt with their token columns, read from ComfyUI's tokenizer for this CLIP."""
    try:
        streams = clip.tokenize(text, return_word_ids=True)
    except TypeError as e:
        raise ConduitError(node, f"this CLIP's tokenizer cannot report word positions ({e}).",
                           "use the text encoder that belongs to an SD1.x, SD2.x or SDXL checkpoint.") from e
    keys = [k for k in STREAM_ORDER if k in streams] + [k for k in streams if k not in STREAM_ORDER]
    parsed = {k: _stream_words(streams[k], _stream_tokenizer(clip.tokenizer, k)) for k in keys}
    words, length = parsed[keys[0]]
    for k in keys[1:]:
        other, other_len = parsed[k]
        if [w.columns for w in other] != [w.columns for w in words] or other_len != length:
            log.warning("%s: text encoder streams %s and %s place the prompt's words at different token "
                        "columns; using stream %s", node, keys[0], k, keys[0])
    return PromptTokens(words, length)


def subject_tokens(prompt: PromptTokens, subject: str, node: str) -> list[Subject]:
    """One Subject per phrase in `subject` (comma-separated); empty -> every guessed noun of the prompt."""
    norms = prompt.norms
    listing = ", ".join(w.text for w in prompt.words) or "(none)"
    phrases = words_lib.split_subject(subject)
    if not phrases:
        if subject.strip():
            log.warning("%s: subject %r holds no word (only separators or symbols), so every noun of the prompt "
                        "is kept as the subject instead; type the subject's words to pick one.", node, subject[:80])
        nouns = words_lib.guess_nouns(norms)
        if not nouns:
            raise ConduitError(node, f"the prompt has no word the noun rule accepts (prompt words: {listing}).",
                               "type the subject words in 'subject'.")
        chosen: dict[str, list[int]] = {}
        for i in nouns:
            chosen.setdefault(norms[i], []).extend(prompt.words[i].columns)
        return [Subject(name, tuple(sorted(cols))) for name, cols in chosen.items()]
    out = []
    for phrase in phrases:
        hits = words_lib.find_phrase(norms, phrase)
        name = " ".join(phrase)
        if not hits:
            raise ConduitError(node, f"subject '{name}' is not in the prompt. The prompt's words are: {listing}.",
                               "write subject words exactly as they appear in the prompt, comma-separated.")
        cols = sorted({c for i in hits for c in prompt.words[i].columns})
        out.append(Subject(name, tuple(cols)))
    return out
