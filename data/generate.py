"""Generate the embedded English→German corpus from a small grammar.

Each sentence is sampled as a syntax tree, then realised in both languages at once. Every word is
emitted with link ids shared by its English and German sides, so the gold alignments come from the
grammar, not from a heuristic. `python data/generate.py` rewrites the files next to this script;
`--check` exits 1 if the committed files differ from a fresh generation.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

DEFAULT_SEED = 1234
SPLIT_SIZES = {"train": 20_000, "dev": 500, "test": 500}
MAX_TOKENS = 25

# english sg pl | german sg pl (weak masculines: sg/oblique) | gender | tags (kind first)
NOUN_TABLE = """
man men Mann Männer m person          woman women Frau Frauen f person
boy boys Junge/Jungen Jungen m person girl girls Mädchen Mädchen n person
child children Kind Kinder n person   teacher teachers Lehrer Lehrer m person
doctor doctors Arzt Ärzte m person    cook cooks Koch Köche m person
farmer farmers Bauer/Bauern Bauern m person
student students Student/Studenten Studenten m person
neighbour neighbours Nachbar/Nachbarn Nachbarn m person
sister sisters Schwester Schwestern f person
brother brothers Bruder Brüder m person
mother mothers Mutter Mütter f person father fathers Vater Väter m person
king kings König Könige m person      queen queens Königin Königinnen f person
dog dogs Hund Hunde m animal          cat cats Katze Katzen f animal
bird birds Vogel Vögel m animal       mouse mice Maus Mäuse f animal
horse horses Pferd Pferde n animal    cow cows Kuh Kühe f animal
pig pigs Schwein Schweine n animal    duck ducks Ente Enten f animal
lion lions Löwe/Löwen Löwen m animal  bear bears Bär/Bären Bären m animal
monkey monkeys Affe/Affen Affen m animal
elephant elephants Elefant/Elefanten Elefanten m animal
rabbit rabbits Kaninchen Kaninchen n animal
ball balls Ball Bälle m thing,hold    book books Buch Bücher n thing,hold,text,open
apple apples Apfel Äpfel m thing,hold,food
cake cakes Kuchen Kuchen m thing,hold,food
letter letters Brief Briefe m thing,hold,text,open
key keys Schlüssel Schlüssel m thing,hold
lamp lamps Lampe Lampen f thing,hold  flower flowers Blume Blumen f thing,hold
cup cups Tasse Tassen f thing,hold    picture pictures Bild Bilder n thing,hold
bag bags Tasche Taschen f thing,hold,open,in
box boxes Kiste Kisten f thing,hold,open,in,on
table tables Tisch Tische m thing,on,under
chair chairs Stuhl Stühle m thing,on,under
bed beds Bett Betten n thing,in,on,under
car cars Auto Autos n thing,open,in  boat boats Boot Boote n thing,in
tree trees Baum Bäume m thing,under
house houses Haus Häuser n place,in   garden gardens Garten Gärten m place,in
kitchen kitchens Küche Küchen f place,in
school schools Schule Schulen f place,in
river rivers Fluss Flüsse m place,in
bridge bridges Brücke Brücken f place,on,under
street streets Straße Straßen f place,on
roof roofs Dach Dächer n place,on     field fields Feld Felder n place,on
door doors Tür Türen f thing,open     window windows Fenster Fenster n thing,open
"""

# english 3sg pl particle | german 3sg pl separable-prefix | frame | subject tags | object tags
VERB_TABLE = """
sleeps sleep - schläft schlafen - intr person,animal -
runs run - läuft laufen - intr person,animal -
laughs laugh - lacht lachen - intr person -
sings sing - singt singen - intr person,animal -
waits wait - wartet warten - intr person,animal -
swims swim - schwimmt schwimmen - intr person,animal -
dances dance - tanzt tanzen - intr person -
works work - arbeitet arbeiten - intr person -
sits sit - sitzt sitzen - intr person,animal -
stands stand - steht stehen - intr person,animal -
plays play - spielt spielen - intr person,animal -
cries cry - weint weinen - intr person -
jumps jump - springt springen - intr person,animal -
falls fall - fällt fallen - intr person,animal -
wakes wake up wacht wachen auf intr person,animal -
sees see - sieht sehen - acc person,animal person,animal,thing,place
reads read - liest lesen - acc person text
eats eat - isst essen - acc person,animal food
takes take - nimmt nehmen - acc person hold
carries carry - trägt tragen - acc person hold,animal
holds hold - hält halten - acc person hold
finds find - findet finden - acc person,animal person,animal,thing
buys buy - kauft kaufen - acc person hold,animal
likes like - mag mögen - acc person,animal person,animal,thing,place
visits visit - besucht besuchen - acc person person
washes wash - wäscht waschen - acc person animal,hold
catches catch - fängt fangen - acc person,animal animal,hold
paints paint - malt malen - acc person person,animal,thing,place
loves love - liebt lieben - acc person,animal person,animal
hears hear - hört hören - acc person,animal person,animal
opens open - öffnet öffnen - acc person open
calls call - ruft rufen an acc person person
invites invite - lädt laden ein acc person person
helps help - hilft helfen - dat person,animal person,animal
follows follow - folgt folgen - dat person,animal person,animal
thanks thank - dankt danken - dat person person
says say - sagt sagen - clause person -
thinks think - denkt denken - clause person -
believes believe - glaubt glauben - clause person -
hopes hope - hofft hoffen - clause person -
knows know - weiß wissen - clause person -
"""

# english | german stem (takes the ending as is: müd+e) | kinds of noun it describes
ADJECTIVE_TABLE = """
big groß person,animal,thing,place      small klein person,animal,thing,place
old alt person,animal,thing,place       young jung person,animal
new neu thing,place                     red rot thing
green grün thing                        black schwarz animal,thing
white weiß animal,thing                 brown braun animal,thing
tired müd person,animal                 hungry hungrig person,animal
happy glücklich person,animal           fast schnell person,animal
beautiful schön person,animal,thing,place
"""

# english (words joined by _) | german, always with the dative here | tags the noun needs
PREPOSITION_TABLE = """
in in in        on auf on       under unter under      with mit person,animal
next_to neben person,animal,thing,place   behind hinter person,animal,thing,place
in_front_of vor person,animal,thing,place
"""

CONJUNCTIONS = {"and": "und", "because": "weil", "although": "obwohl"}
DEFINITE = {
    "nom": {"m": "der", "f": "die", "n": "das", "pl": "die"},
    "acc": {"m": "den", "f": "die", "n": "das", "pl": "die"},
    "dat": {"m": "dem", "f": "der", "n": "dem", "pl": "den"},
}
INDEFINITE = {
    "nom": {"m": "ein", "f": "eine", "n": "ein"},
    "acc": {"m": "einen", "f": "eine", "n": "ein"},
    "dat": {"m": "einem", "f": "einer", "n": "einem"},
}
# adjective endings after a definite article (weak) and after ein/eine (mixed)
WEAK_ENDINGS = {
    "nom": {"m": "e", "f": "e", "n": "e", "pl": "en"},
    "acc": {"m": "en", "f": "e", "n": "e", "pl": "en"},
    "dat": {"m": "en", "f": "en", "n": "en", "pl": "en"},
}
MIXED_ENDINGS = {
    "nom": {"m": "er", "f": "e", "n": "es"},
    "acc": {"m": "en", "f": "e", "n": "es"},
    "dat": {"m": "en", "f": "en", "n": "en"},
}


class Noun(NamedTuple):
    en: str
    en_plural: str
    de: str
    de_plural: str
    de_oblique: str  # accusative/dative singular; differs only for weak masculines (den Jungen)
    gender: str
    tags: tuple[str, ...]


class Verb(NamedTuple):
    en: str  # third person singular
    en_plural: str
    en_particle: str | None  # "wakes up"
    de: str
    de_plural: str
    de_prefix: str | None  # separable: "ruft … an" in main clauses, "anruft" verb-final
    frame: str  # "intr", "acc"/"dat" (object case), or "clause" (takes a dass-clause)
    subject_tags: tuple[str, ...]
    object_tags: tuple[str, ...]


class Adjective(NamedTuple):
    en: str
    de_stem: str
    tags: tuple[str, ...]


class Preposition(NamedTuple):
    en: str
    de: str
    tags: tuple[str, ...]


def _rows(table: str, width: int) -> Iterator[list[str]]:
    """Fields of a table, `width` per entry; several entries may share a line."""
    fields = table.split()
    for start in range(0, len(fields), width):
        yield fields[start : start + width]


def _noun(en: str, en_plural: str, de: str, de_plural: str, gender: str, tags: str) -> Noun:
    de_nominative, _, de_oblique = de.partition("/")
    return Noun(en, en_plural, de_nominative, de_plural, de_oblique or de, gender, tuple(tags.split(",")))


def _verb(row: list[str]) -> Verb:
    en, en_plural, en_particle, de, de_plural, de_prefix, frame, subject_tags, object_tags = row
    return Verb(
        en, en_plural, None if en_particle == "-" else en_particle,
        de, de_plural, None if de_prefix == "-" else de_prefix,
        frame, tuple(subject_tags.split(",")), tuple(object_tags.split(",")),
    )  # fmt: skip


NOUNS = {row[0]: _noun(*row) for row in _rows(NOUN_TABLE, 6)}
VERBS = {row[0]: _verb(row) for row in _rows(VERB_TABLE, 9)}
ADJECTIVES = {en: Adjective(en, de, tuple(tags.split(","))) for en, de, tags in _rows(ADJECTIVE_TABLE, 3)}
PREPOSITIONS = {
    en.replace("_", " "): Preposition(en.replace("_", " "), de, tuple(tags.split(",")))
    for en, de, tags in _rows(PREPOSITION_TABLE, 3)
}


# --- syntax trees; words are named by their English form, which keys the tables above ---


@dataclass(frozen=True)
class NounPhrase:
    noun: str
    adjective: str | None = None
    article: str = "the"  # "the" or "a"
    plural: bool = False  # only with "the"


@dataclass(frozen=True)
class PrepPhrase:
    preposition: str
    object: NounPhrase


@dataclass(frozen=True)
class Clause:
    subject: NounPhrase
    verb: str
    object: NounPhrase | None = None
    place: PrepPhrase | None = None
    complement: Clause | None = None  # the that-clause of "says", "thinks", ...


@dataclass(frozen=True)
class Sentence:
    main: Clause
    conjunction: str | None = None  # "and", "because" or "although", joining `other`
    other: Clause | None = None
    fronted: bool = False  # "because B , A .": the German main clause then starts with its verb


# --- realisation: both languages at once, each word carrying the ids of its counterparts ---


class Word(NamedTuple):
    text: str
    links: tuple[int, ...]  # shared with the words it translates; () stays unaligned


class Phrase(NamedTuple):
    en: list[Word]
    de: list[Word]


class SentencePair(NamedTuple):
    en: tuple[str, ...]
    de: tuple[str, ...]
    alignment: tuple[tuple[int, int], ...]  # (English index, German index), sorted


def realize_noun_phrase(phrase: NounPhrase, case: str, ids: Iterator[int]) -> Phrase:
    """'the big dog' in `case`: der große Hund, den großen Hund, dem großen Hund, ..."""
    noun = NOUNS[phrase.noun]
    slot = "pl" if phrase.plural else noun.gender
    article_id, adjective_id, noun_id = next(ids), next(ids), next(ids)
    en_words = [Word(noun.en_plural if phrase.plural else noun.en, (noun_id,))]
    de_words = [Word(_german_noun(noun, case, phrase.plural), (noun_id,))]
    endings = WEAK_ENDINGS if phrase.article == "the" else MIXED_ENDINGS
    if phrase.adjective:
        adjective = ADJECTIVES[phrase.adjective]
        en_words.insert(0, Word(adjective.en, (adjective_id,)))
        de_words.insert(0, Word(adjective.de_stem + endings[case][slot], (adjective_id,)))
    if phrase.article == "the":
        en_article, de_article = "the", DEFINITE[case][slot]
    else:
        en_article = "an" if en_words[0].text[0] in "aeiou" else "a"
        de_article = INDEFINITE[case][slot]
    return Phrase([Word(en_article, (article_id,)), *en_words], [Word(de_article, (article_id,)), *de_words])


def _german_noun(noun: Noun, case: str, plural: bool) -> str:
    if not plural:
        return noun.de if case == "nom" else noun.de_oblique
    takes_n = case == "dat" and not noun.de_plural.endswith(("n", "s"))  # den Hunden, den Autos
    return noun.de_plural + "n" * takes_n


def realize_prep_phrase(phrase: PrepPhrase, ids: Iterator[int]) -> Phrase:
    """'in the garden' → im Garten; every preposition here takes the dative."""
    preposition_id = next(ids)
    obj = realize_noun_phrase(phrase.object, "dat", ids)
    en = [Word(text, (preposition_id,)) for text in phrase.preposition.split()]
    de_preposition = PREPOSITIONS[phrase.preposition].de
    if de_preposition == "in" and obj.de[0].text == "dem":  # contracted, as German always does
        return Phrase(en + obj.en, [Word("im", (preposition_id, *obj.de[0].links)), *obj.de[1:]])
    return Phrase(en + obj.en, [Word(de_preposition, (preposition_id,)), *obj.de])


def realize_clause(clause: Clause, order: str, ids: Iterator[int]) -> Phrase:
    """German `order`: "main" (verb second), "inverted" (verb first) or "final" (subordinate)."""
    verb = VERBS[clause.verb]
    subject = realize_noun_phrase(clause.subject, "nom", ids)
    verb_id = next(ids)
    particle_id = next(ids) if verb.en_particle else verb_id  # "up" ↔ "auf"; "an" belongs to "calls"
    en_verb = [Word(verb.en_plural if clause.subject.plural else verb.en, (verb_id,))]
    if verb.en_particle:
        en_verb.append(Word(verb.en_particle, (particle_id,)))
    middle = Phrase([], [])
    if clause.object:
        middle = _joined(middle, realize_noun_phrase(clause.object, verb.frame, ids))
    if clause.place:
        middle = _joined(middle, realize_prep_phrase(clause.place, ids))
    finite = verb.de_plural if clause.subject.plural else verb.de
    prefix = [Word(verb.de_prefix, (particle_id,))] if verb.de_prefix else []
    if order == "final":
        links = tuple(dict.fromkeys((verb_id, particle_id)))  # "aufwacht" ↔ "wakes up"
        de = [*subject.de, *middle.de, Word((verb.de_prefix or "") + finite, links)]
    elif order == "inverted":
        de = [Word(finite, (verb_id,)), *subject.de, *middle.de, *prefix]
    else:
        de = [*subject.de, Word(finite, (verb_id,)), *middle.de, *prefix]
    en = subject.en + en_verb + middle.en
    if clause.complement:
        that_id = next(ids)
        complement = realize_clause(clause.complement, "final", ids)
        en += [Word("that", (that_id,)), *complement.en]
        de += [Word(",", ()), Word("dass", (that_id,)), *complement.de]
    return Phrase(en, de)


def _joined(*phrases: Phrase) -> Phrase:
    return Phrase([w for p in phrases for w in p.en], [w for p in phrases for w in p.de])


def _single(en: str, de: str, ids: Iterator[int]) -> Phrase:
    link = (next(ids),)
    return Phrase([Word(en, link)], [Word(de, link)])


def realize(sentence: Sentence) -> SentencePair:
    """Both sides of a sentence, tokenised, with the alignment the grammar implies."""
    ids = itertools.count()
    if sentence.conjunction is None or sentence.other is None:
        body = realize_clause(sentence.main, "main", ids)
    elif sentence.conjunction == "and":
        first = realize_clause(sentence.main, "main", ids)
        body = _joined(first, _single("and", "und", ids), realize_clause(sentence.other, "main", ids))
    else:
        conjunction = _single(sentence.conjunction, CONJUNCTIONS[sentence.conjunction], ids)
        comma = _single(",", ",", ids)
        subordinate = _joined(conjunction, realize_clause(sentence.other, "final", ids))
        if sentence.fronted:
            body = _joined(subordinate, comma, realize_clause(sentence.main, "inverted", ids))
        else:
            body = _joined(realize_clause(sentence.main, "main", ids), comma, subordinate)
    words = _joined(body, _single(".", ".", ids))
    return SentencePair(tuple(w.text for w in words.en), tuple(w.text for w in words.de), _alignment(words))


def _alignment(words: Phrase) -> tuple[tuple[int, int], ...]:
    """Every (English, German) index pair whose words share a link id."""
    de_positions: dict[int, list[int]] = {}
    for j, word in enumerate(words.de):
        for link in word.links:
            de_positions.setdefault(link, []).append(j)
    pairs = {
        (i, j) for i, word in enumerate(words.en) for link in word.links for j in de_positions.get(link, [])
    }
    return tuple(sorted(pairs))


# --- sampling ---

SENTENCE_KINDS = {"simple": 45, "that": 20, "and": 10, "trailing": 15, "fronted": 10}
SIMPLE_FRAMES = {"intr": 40, "acc": 48, "dat": 12}


@functools.cache
def _nouns_tagged(wanted: tuple[str, ...], avoid: tuple[str, ...]) -> tuple[Noun, ...]:
    return tuple(n for n in NOUNS.values() if any(tag in wanted for tag in n.tags) and n.en not in avoid)


@functools.cache
def _adjectives_for(kind: str) -> tuple[str, ...]:
    return tuple(a.en for a in ADJECTIVES.values() if kind in a.tags)


def sample_noun_phrase(
    rng: random.Random, wanted: tuple[str, ...], avoid: tuple[str, ...] = ()
) -> NounPhrase:
    """A noun with one of the `wanted` tags (other than `avoid`), sometimes with an adjective."""
    noun = rng.choice(_nouns_tagged(wanted, avoid))
    adjective = rng.choice(_adjectives_for(noun.tags[0])) if rng.random() < 0.3 else None
    form = rng.random()
    if form < 0.2:
        return NounPhrase(noun.en, adjective, "the", plural=True)
    return NounPhrase(noun.en, adjective, "a" if form < 0.4 else "the")


def sample_clause(rng: random.Random, frame: str) -> Clause:
    """A clause whose verb has `frame`; a "clause" verb gets a simple that-clause."""
    verb = rng.choice(_verbs_with(frame))
    subject = sample_noun_phrase(rng, verb.subject_tags)
    if frame == "clause":
        return Clause(subject, verb.en, complement=sample_clause(rng, _sample_simple_frame(rng)))
    used = (subject.noun,)  # no "the dog sees the dog"
    obj = sample_noun_phrase(rng, verb.object_tags, used) if frame in ("acc", "dat") else None
    used += (obj.noun,) if obj else ()
    place = None
    if rng.random() < 0.35:
        preposition = rng.choice(tuple(PREPOSITIONS.values()))
        place = PrepPhrase(preposition.en, sample_noun_phrase(rng, preposition.tags, used))
    return Clause(subject, verb.en, obj, place)


@functools.cache
def _verbs_with(frame: str) -> tuple[Verb, ...]:
    return tuple(v for v in VERBS.values() if v.frame == frame)


def _sample_simple_frame(rng: random.Random) -> str:
    return rng.choices(list(SIMPLE_FRAMES), weights=list(SIMPLE_FRAMES.values()))[0]


def sample_sentence(rng: random.Random) -> Sentence:
    kind = rng.choices(list(SENTENCE_KINDS), weights=list(SENTENCE_KINDS.values()))[0]
    if kind == "that":
        return Sentence(sample_clause(rng, "clause"))
    main = sample_clause(rng, _sample_simple_frame(rng))
    if kind == "simple":
        return Sentence(main)
    other = sample_clause(rng, _sample_simple_frame(rng))
    conjunction = "and" if kind == "and" else rng.choice(["because", "although"])
    return Sentence(main, conjunction, other, fronted=kind == "fronted")


# --- corpus files ---


def generate_pairs(seed: int, count: int) -> list[SentencePair]:
    """`count` pairs with distinct English sides, in a seeded random order."""
    rng = random.Random(seed)
    pairs: dict[tuple[str, ...], SentencePair] = {}
    while len(pairs) < count:
        pair = realize(sample_sentence(rng))
        if max(len(pair.en), len(pair.de)) <= MAX_TOKENS:
            pairs.setdefault(pair.en, pair)
    ordered = list(pairs.values())
    rng.shuffle(ordered)  # later draws favour rarer sentences; shuffling keeps the splits alike
    return ordered


def build_corpus(seed: int = DEFAULT_SEED) -> dict[str, bytes]:
    """File name → contents for every split; dev and test also get their gold alignments."""
    pairs = generate_pairs(seed, sum(SPLIT_SIZES.values()))
    files: dict[str, bytes] = {}
    start = 0
    for split, size in SPLIT_SIZES.items():
        chunk = pairs[start : start + size]
        start += size
        files[f"{split}.en"] = _lines(" ".join(p.en) for p in chunk)
        files[f"{split}.de"] = _lines(" ".join(p.de) for p in chunk)
        if split != "train":
            files[f"{split}.align"] = _lines(" ".join(f"{i}-{j}" for i, j in p.alignment) for p in chunk)
    return files


def _lines(lines: Iterator[str]) -> bytes:
    return "".join(f"{line}\n" for line in lines).encode("utf-8")


def write_corpus(files: dict[str, bytes], out_dir: Path) -> None:
    """Write each file atomically: readers see the old version or the new one."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = out_dir / name
        tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def differing_files(files: dict[str, bytes], out_dir: Path) -> list[str]:
    """Names whose file in `out_dir` is missing or not byte-identical to `files`."""
    return [name for name, data in files.items() if _read(out_dir / name) != data]


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the embedded English→German corpus.")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output directory")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--check", action="store_true", help="exit 1 if the files in --out are out of date")
    args = parser.parse_args(argv)
    files = build_corpus(args.seed)
    if args.check:
        stale = differing_files(files, args.out)
        for name in stale:
            print(f"{args.out / name}: differs from what generate.py produces", file=sys.stderr)
        return 1 if stale else 0
    write_corpus(files, args.out)
    print(f"wrote {len(files)} files to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
