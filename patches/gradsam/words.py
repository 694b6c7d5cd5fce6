"""Prompt words for Abs-Grad-SAM: normalise, match subject phrases, and guess nouns without an NLP library.

The reference used spaCy to tag nouns. ComfyUI ships no tagger, so when no subject is typed we keep every
word that is not on a closed list (articles, prepositions, pronouns, conjunctions, auxiliaries, numbers,
common adjectives/colours/sizes, common verbs, picture/quality words) and does not end like an adverb,
adjective or verb form. Limits: verbs outside the list ("gallops") and unlisted adjectives ("velvety")
count as nouns; nouns that end like an -ing/-ed form and are not in NOUN_EXCEPTIONS are dropped. Type the
subject words when the guess is wrong.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

STOPWORDS = frozenset("""
a an the this that these those some any each every no another other such
and or but nor so yet either neither both
of in on at by for with without to from into onto upon over under above below behind beside besides
between among around across through along against near toward towards inside outside within off out up
down about after before during until while via beyond underneath amid amidst next front top bottom
is are was were be been being am has have had having do does did will would shall should can could may
might must
it its it's he she they them their his her him we us our you your i me my mine theirs
who whom whose which what where when why how there here than then very too also just only not
as like
one two three four five six seven eight nine ten eleven twelve dozen many few several lots lot
""".split())

ADJECTIVES = frozenset("""
red orange yellow green blue purple violet pink brown black white gray grey golden silver dark light
bright pale colorful colourful vivid
big small large tiny huge giant little tall short long wide narrow thick thin fat slim
old young new ancient modern antique vintage
beautiful pretty cute ugly lovely gorgeous stunning majestic elegant fancy simple plain
happy sad angry calm quiet loud wild tame busy empty full open closed
hot cold warm cool wet dry snowy sunny rainy cloudy foggy misty stormy windy
high low deep shallow far near distant
realistic photorealistic detailed hyperdetailed intricate sharp blurry soft hard smooth rough
cinematic dramatic epic surreal abstract minimalist
best good great nice bad
""".split())

VERBS = frozenset("""
stands stand standing sits sit sitting runs run running walks walk walking flies fly flying
swims swim swimming jumps jump jumping lies lie lying sleeps sleep sleeping eats eat eating
plays play playing holds hold holding looks look looking roams roam roaming grazes graze grazing
rides ride riding parked parks waits wait waiting floats float floating sails sail sailing
drives drive driving crosses cross crossing climbs climb climbing rests rest resting
""".split())

PICTURE_WORDS = frozenset("""
photo photograph picture image illustration painting drawing render rendering artwork art style
background foreground scene view shot closeup close-up quality detail details resolution masterpiece
4k 8k hd uhd raw dslr bokeh lighting
""".split())

NOUN_EXCEPTIONS = frozenset("""
building ceiling clothing wedding morning evening king ring wing spring string thing swing sibling
duckling sapling pudding stocking bed shed sled
""".split())

NON_NOUN_SUFFIXES = ("ly", "ous", "ful", "ish", "less", "able", "ible", "ing", "ed")

_EDGE = re.compile(r"^[^\w]+|[^\w]+$", re.UNICODE)


def normalize(word: str) -> str:
    """Lower-case and strip punctuation at both ends ("Cat," -> "cat"; inner hyphens stay)."""
    return _EDGE.sub("", word.strip().lower())


def split_subject(subject: str) -> list[list[str]]:
    """'red car, dog' -> [['red', 'car'], ['dog']] (commas separate phrases, spaces separate words)."""
    phrases = []
    for part in subject.replace(";", ",").split(","):
        words = [normalize(w) for w in part.split()]
        words = [w for w in words if w]
        if words:
            phrases.append(words)
    return phrases


def find_phrase(words: Sequence[str], phrase: Sequence[str]) -> list[int]:
    """Indices of every prompt word covered by an occurrence of the phrase (all repeats)."""
    n = len(phrase)
    hits: list[int] = []
    for i in range(len(words) - n + 1):
        if list(words[i:i + n]) == list(phrase):
            hits.extend(range(i, i + n))
    return hits


def looks_like_noun(word: str) -> bool:
    w = normalize(word)
    if not w or not any(ch.isalpha() for ch in w):
        return False
    if w in NOUN_EXCEPTIONS:
        return True
    if w in STOPWORDS or w in ADJECTIVES or w in VERBS or w in PICTURE_WORDS:
        return False
    return not (len(w) > 4 and w.endswith(NON_NOUN_SUFFIXES))


def guess_nouns(words: Sequence[str]) -> list[int]:
    """Indices of the prompt words the heuristic above treats as nouns."""
    return [i for i, w in enumerate(words) if looks_like_noun(w)]
