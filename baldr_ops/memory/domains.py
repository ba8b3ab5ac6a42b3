"""The evaluation's domains: what `baldr-ops memory eval` stores and asks.

A domain set (`DomainSet`) has domains, each with memory texts (what is stored), separate held-out
sentences the domain's vocabulary is derived from by log-odds (so the vocabulary is never read off
the memories), and queries mildly or strongly related to it; neutral queries (no domain); and
neutral text, on which the perplexity cost is measured.

`BUILTIN` is written for this kit (4 domains x 4 memories, 32 queries); it is the set the key rule
and the defaults were tuned on. `load_domain_set` reads an operator's own set from JSON::

    {"schema_version": 1, "name": "...",
     "domains": [{"name": "...", "memories": ["..."], "heldout": ["..."],
                  "queries": [{"text": "...", "kind": "strong"}, "a plain string is a strong query"]}],
     "neutral_queries": ["..."], "neutral_text": ["..."]}

`baldr_ops/memory/data/domains-set2.json` to `-set7.json` are six such sets (30 domains). They were
written as held-out sets and now serve as the *topic corpus* (`topic_groups`): the texts the
within-topic key metric learns how texts on one subject vary (`keyspace`). An evaluation on them is
therefore in sample; tests/memory/data holds the sets written after that, never part of the corpus.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from baldr_ops.errors import UserError


@dataclass(frozen=True)
class Domain:
    name: str
    memories: tuple[str, ...]
    heldout: tuple[str, ...]  # source of the domain vocabulary, disjoint from the memories


@dataclass(frozen=True)
class Query:
    text: str
    kind: str  # "neutral", "mild" or "strong"
    domain: str | None  # the domain it relates to (None for neutral queries)


DOMAINS: tuple[Domain, ...] = (
    Domain(
        name="cooking",
        memories=(
            "Brown the onions slowly in butter, then add garlic, a spoonful of flour and the stock, and let "
            "the sauce simmer until it thickens.",
            "For a good pastry, keep the butter cold, rub it into the flour quickly, and rest the dough in "
            "the fridge before you roll it out.",
            "Season the chicken with salt, pepper and lemon, roast it in a hot oven, and baste it with the "
            "pan juices every twenty minutes.",
            "A risotto needs hot stock added one ladle at a time, constant stirring, and a knob of butter "
            "and grated parmesan at the end.",
        ),
        heldout=(
            "Chop the carrots and celery, fry them in olive oil, and stir in the tomatoes.",
            "Knead the bread dough for ten minutes, let it rise, then bake it until the crust is golden.",
            "Whisk the eggs with sugar and vanilla, fold in the flour, and pour the batter into a tin.",
            "Grill the fish with herbs, squeeze lemon over it, and serve it with boiled potatoes.",
            "Simmer the soup gently, taste it, and add more salt, pepper or a pinch of spice.",
            "Slice the mushrooms, saute them in a hot pan, and finish the dish with cream and parsley.",
            "Marinate the beef overnight, sear it in a skillet, and let the meat rest before carving.",
            "Boil the pasta in salted water, drain it, and toss it with the sauce and cheese.",
            "The recipe calls for two cups of rice, a teaspoon of cumin, and a chopped chilli.",
            "Preheat the oven, grease the baking tray, and roast the vegetables with garlic and thyme.",
            "Dice the potatoes, parboil them, and crisp them in the oven with rosemary and oil.",
            "Melt the chocolate over a pan of simmering water and stir in the cream.",
            "Fry the bacon until crisp, then cook the eggs in the fat left in the pan.",
            "Stir-fry the noodles with ginger, soy sauce, spring onions and a little sesame oil.",
            "Blanch the beans in boiling water, then cool them in iced water to keep them green.",
            "Rub the lamb with garlic and oregano and cook it slowly until it falls off the bone.",
            "Sift the flour with baking powder and a pinch of salt before adding the milk.",
            "Taste the stew before serving and adjust the seasoning with salt and vinegar.",
            "Grate the cheese, beat it into the white sauce, and pour it over the cauliflower.",
            "Chill the custard overnight, then caramelise the sugar on top with a blowtorch.",
        ),
    ),
    Domain(
        name="astronomy",
        memories=(
            "The telescope revealed Jupiter's four largest moons lined up beside the planet, with faint "
            "bands of cloud across its disk.",
            "A star more massive than the Sun ends its life in a supernova, leaving behind a neutron star "
            "or a black hole.",
            "The Andromeda galaxy is about two and a half million light years away and is slowly moving "
            "towards our Milky Way.",
            "During a total solar eclipse the Moon covers the Sun completely and the glowing corona becomes "
            "visible around the dark disk.",
        ),
        heldout=(
            "Astronomers measured the orbit of the comet as it passed close to the Sun.",
            "The observatory recorded light from a distant quasar at the edge of the universe.",
            "Saturn's rings are made of ice and rock that circle the planet in thin sheets.",
            "A nebula is a cloud of gas and dust where new stars are born.",
            "The spacecraft sent back images of craters on the surface of Mars.",
            "Gravity holds the planets in orbit, and the solar system formed from a spinning disk.",
            "On a clear night you can see the constellation Orion and the bright star Sirius.",
            "Cosmic radiation and dark matter are studied with space telescopes and satellites.",
            "An asteroid belt lies between the orbits of Mars and Jupiter.",
            "The astronaut watched the Earth rise over the lunar horizon from orbit.",
            "The rover drilled into the Martian rock and measured the minerals inside.",
            "A light year is the distance light travels through space in one year.",
            "The planet's moons were discovered by a probe that flew past in the seventies.",
            "Meteors streak across the sky when dust from a comet burns up in the atmosphere.",
            "The galaxy contains billions of stars orbiting a supermassive black hole.",
            "Astronomers use spectra to measure the temperature and composition of stars.",
            "The space station orbits the Earth every ninety minutes at high speed.",
            "Venus is the brightest planet in the evening sky, wrapped in thick clouds.",
            "The telescope's mirror collects faint light from galaxies billions of years old.",
            "A pulsar is a spinning neutron star that sends out regular beams of radiation.",
        ),
    ),
    Domain(
        name="finance",
        memories=(
            "The central bank raised interest rates to slow inflation, and bond yields rose while share "
            "prices fell.",
            "A diversified portfolio spreads money across stocks, bonds and cash so that one loss does not "
            "sink the whole investment.",
            "The company reported higher quarterly revenue, but its profit margin shrank because of rising "
            "costs and debt payments.",
            "Paying off a high-interest credit card first saves more money than paying off a low-interest "
            "loan.",
        ),
        heldout=(
            "Investors sold their shares when the market dropped and moved into government bonds.",
            "The bank approved the mortgage after checking her income, savings and credit history.",
            "Analysts expect earnings to grow next year as the economy recovers.",
            "The fund charges a fee of one percent of assets under management each year.",
            "A budget tracks income and expenses so that you can save part of every salary.",
            "The stock exchange closed higher after the report on employment and wages.",
            "Taxes on dividends and capital gains reduce the return on an investment.",
            "The currency weakened against the dollar as traders priced in lower rates.",
            "The firm borrowed capital to expand, raising its debt and its interest costs.",
            "An index fund buys every stock in the index and holds it for the long term.",
            "The pension fund invests in equities, property and corporate bonds.",
            "Inflation erodes the value of savings when wages do not keep up with prices.",
            "The lender raised the interest rate on the loan after the base rate increase.",
            "Shareholders received a dividend after the company posted record profits.",
            "The accountant prepared the balance sheet and the annual tax return.",
            "Traders on the exchange bought shares in banks and sold technology stocks.",
            "A credit score affects how much you can borrow and at what interest rate.",
            "The treasury issued new bonds to finance the government's deficit.",
            "Retail investors poured money into the fund when prices were rising.",
            "The bank's quarterly earnings beat forecasts thanks to higher lending margins.",
        ),
    ),
    Domain(
        name="music",
        memories=(
            "The orchestra tuned to the oboe's A before the conductor raised the baton for the symphony's "
            "first movement.",
            "She practised the piano sonata slowly, hands separately, until every scale and chord was "
            "clean.",
            "The band's drummer kept a steady beat while the bass guitar and the singer worked out the new "
            "chorus.",
            "A minor key often sounds sad, while a major chord progression gives a song a bright, hopeful "
            "feeling.",
        ),
        heldout=(
            "The choir sang the hymn in four-part harmony, and the organ played the melody.",
            "He tuned his violin, rosined the bow, and played the opening bars of the concerto.",
            "The jazz trumpet improvised a solo over the rhythm of the double bass.",
            "The composer wrote an opera with arias for soprano and tenor.",
            "The guitarist strummed the chords while the audience clapped along to the tune.",
            "Her album topped the charts, and the single was played on every radio station.",
            "The concert hall has excellent acoustics for chamber music and string quartets.",
            "Learning to read sheet music means knowing notes, rests, tempo and rhythm.",
            "The festival stage hosted rock bands, a folk singer and an electronic DJ.",
            "The drummer and the pianist recorded the song in the studio in one take.",
            "The cellist played a slow sarabande, and the audience listened in silence.",
            "The conductor raised the tempo in the finale, and the brass section roared.",
            "She wrote the lyrics first and then found a melody on her acoustic guitar.",
            "The quartet rehearsed the harmony of the chorus until every voice blended.",
            "The saxophone solo rose above the piano chords in the smoky jazz club.",
            "A symphony usually has four movements, each with its own tempo and mood.",
            "The singer hit the high note, and the crowd cheered before the last verse.",
            "The record label released the band's new album on vinyl and streaming.",
            "He practised scales and arpeggios on the flute every morning before school.",
            "The festival orchestra performed a concerto with a famous soloist.",
        ),
    ),
)

QUERIES: tuple[Query, ...] = (
    Query("The key to success is", "neutral", None),
    Query("Yesterday afternoon I decided to", "neutral", None),
    Query("The most interesting thing about it is", "neutral", None),
    Query("My favourite way to spend a weekend is", "neutral", None),
    Query("Before the guests arrived, she went into the kitchen and", "mild", "cooking"),
    Query("To make the sauce taste better, add a little", "strong", "cooking"),
    Query("The secret of a perfect roast dinner is", "strong", "cooking"),
    Query("Late at night, he looked up at the sky and", "mild", "astronomy"),
    Query("Through the telescope, the astronomers could see", "strong", "astronomy"),
    Query("The light from that distant star", "strong", "astronomy"),
    Query("At the end of the month, she looked at her account and", "mild", "finance"),
    Query("When interest rates go up, investors usually", "strong", "finance"),
    Query("The best way to grow your savings is", "strong", "finance"),
    Query("When the lights went down in the hall, everyone", "mild", "music"),
    Query("Before the concert, the violinist", "strong", "music"),
    Query("The song starts with a slow melody and then", "strong", "music"),
    # A second set of 16, written before any result on it was seen, to narrow the selectivity
    # interval (the first 16 alone gave 84-97 %; docs/memory.md, Evaluation).
    Query("The best advice my grandmother ever gave me was", "neutral", None),
    Query("On the first day of the trip, we", "neutral", None),
    Query("People often forget that", "neutral", None),
    Query("The meeting was long, and afterwards", "neutral", None),
    Query("On Sunday morning the whole family gathered around the table and", "mild", "cooking"),
    Query("Once the onions are soft and golden, stir in", "strong", "cooking"),
    Query("For a crisp pastry, keep the butter", "strong", "cooking"),
    Query("Far away from the city lights, the campers noticed", "mild", "astronomy"),
    Query("The planet takes about twelve years to orbit", "strong", "astronomy"),
    Query("When a massive star runs out of fuel, it", "strong", "astronomy"),
    Query("After paying the rent and the bills, there was", "mild", "finance"),
    Query("If the stock market falls sharply, a careful investor should", "strong", "finance"),
    Query("The bank offered him a loan with an interest rate of", "strong", "finance"),
    Query("As soon as the band walked on stage, the crowd", "mild", "music"),
    Query("The pianist practised the difficult chords of the sonata until", "strong", "music"),
    Query("The orchestra tuned their instruments while the conductor", "strong", "music"),
)

NEUTRAL_TEXT: tuple[str, ...] = (
    "The town sits at the bend of a wide river. Most people who live there work in the shops, the "
    "school or the small hospital, and on Saturday mornings the main square fills with market stalls.",
    "Last winter the roads were closed for several days after a heavy snowfall. Neighbours cleared "
    "each other's paths, and the children spent the week building snowmen in the park.",
    "The new library opened in the spring. It has a reading room on the top floor, a corner for "
    "children's books, and a small garden where people sit outside when the weather is warm.",
)


@dataclass(frozen=True)
class DomainSet:
    name: str
    domains: tuple[Domain, ...]
    queries: tuple[Query, ...]  # domain queries and neutral ones (domain None)
    neutral_text: tuple[str, ...]

    def fingerprint(self) -> str:
        """sha256 over every text, so a report names the exact evaluation set."""
        payload = [[d.name, d.memories, d.heldout] for d in self.domains]
        payload.append([[q.text, q.kind, q.domain] for q in self.queries])
        payload.append(list(self.neutral_text))
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


BUILTIN = DomainSet("built-in", DOMAINS, QUERIES, NEUTRAL_TEXT)


def domains_fingerprint() -> str:
    """sha256 of the built-in set."""
    return BUILTIN.fingerprint()


# -- an operator's domain set, from JSON ------------------------------------------------------------
MIN_HELDOUT = 5  # sentences a domain's vocabulary is derived from


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _texts(values: list[str]) -> list[str]:
    out = [v.strip() for v in values]
    if any(not v for v in out):
        raise ValueError("texts must not be empty")
    return out


class QueryFile(_Strict):
    text: str = Field(min_length=1)
    kind: Literal["mild", "strong"] = "strong"


class DomainFile(_Strict):
    name: str = Field(min_length=1)
    memories: list[str] = Field(min_length=1)
    heldout: list[str] = Field(min_length=MIN_HELDOUT)
    queries: list[QueryFile | str] = Field(min_length=1)

    _clean = field_validator("memories", "heldout")(_texts)


class DomainSetFile(_Strict):
    schema_version: int = 1
    name: str | None = None
    domains: list[DomainFile] = Field(min_length=2)
    neutral_queries: list[str] = Field(default_factory=list)
    neutral_text: list[str] = Field(default_factory=list)

    _clean = field_validator("neutral_queries", "neutral_text")(_texts)

    def domain_set(self, default_name: str) -> DomainSet:
        names = [d.name for d in self.domains]
        if len(set(names)) != len(names):
            raise ValueError(f"domain names repeat: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
        queries = [Query(q.text.strip(), q.kind, d.name) if isinstance(q, QueryFile) else Query(q.strip(), "strong", d.name)
                   for d in self.domains for q in d.queries]
        queries += [Query(text, "neutral", None) for text in self.neutral_queries]
        if any(not q.text for q in queries):
            raise ValueError("queries must not be empty")
        return DomainSet(self.name or default_name,
                         tuple(Domain(d.name, tuple(d.memories), tuple(d.heldout)) for d in self.domains),
                         tuple(queries), tuple(self.neutral_text) or NEUTRAL_TEXT)


def _where(error: dict) -> str:
    return ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-"))


def load_domain_set(path: str | Path) -> DomainSet:
    """An operator's domain set from a JSON file (the format above). Neutral text defaults to the
    built-in paragraphs. Bad input is a `UserError` naming the file and the field."""
    path = Path(path).expanduser()
    hint = "see docs/memory.md, 'Your own domains', for the format"
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read the domain set {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"the domain set {path} is not UTF-8 text (byte {exc.start})", hint=hint) from exc
    except ValueError as exc:
        raise UserError(f"the domain set {path} is not valid JSON: {exc}", hint=hint) from exc
    try:
        if isinstance(raw, dict) and raw.get("schema_version", 1) != 1:
            raise ValueError(f"schema_version {raw['schema_version']!r} is not supported (1 is)")
        return DomainSetFile.model_validate(raw).domain_set(path.stem)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UserError(f"the domain set {path}: {_where(first) or 'the document'}: {first['msg']}",
                        hint=hint) from exc
    except ValueError as exc:
        raise UserError(f"the domain set {path}: {exc}", hint=hint) from exc


# -- the topic corpus -------------------------------------------------------------------------------
TOPIC_CORPUS = tuple(Path(__file__).parent / "data" / f"domains-set{i}.json" for i in range(2, 8))


@functools.cache  # read and validated once per process; the result is immutable
def topic_groups() -> tuple[tuple[str, ...], ...]:
    """One group per domain of the shipped sets: its memories and its queries, texts on one subject
    in two styles (statements and unfinished prompts), in a fixed order."""
    return tuple(tuple(d.memories) + tuple(q.text for q in s.queries if q.domain == d.name)
                 for s in map(load_domain_set, TOPIC_CORPUS) for d in s.domains)


def topic_texts() -> frozenset[str]:
    """Every text of the topic corpus."""
    return frozenset(t for group in topic_groups() for t in group)


def topic_corpus_fingerprint() -> str:
    """sha256 over the groups, so a store names the exact corpus its key metric was fitted to."""
    return hashlib.sha256(json.dumps(topic_groups()).encode()).hexdigest()
