"""A generated corpus of short documents about invented entities, with paraphrased questions.

Every document describes one entity (a bridge, a novel, a festival, ...) with a made-up unique
name, a place, a person and a year. Each question asks about one of those facts in other words:
the only words a question shares with its document are names and numbers ("completed" becomes
"finished", "Lighthouse" becomes "beacon"). So neither BM25 nor a dense encoder can match on the
phrasing: BM25 has to find the names, the encoder has to bridge the paraphrase.

Deterministic in `seed`; scales to 100k+ documents (names come from a large syllable space).
"""

from __future__ import annotations

import numpy as np

from ftjax.retrieval.corpus import Document, QAPair

# (document template, [(question template, answer field), ...]); fields: name, place, person,
# year, river. Question wording deliberately avoids the document's content words.
KINDS = {
    "bridge": (
        "The {name} Bridge crosses the {river} River close to the town of {place}. Construction "
        "was completed in {year}, following plans drawn up by the engineer {person}.",
        [("Who designed the {name} span near {place}?", "person"),
         ("In what year was work on the {name} crossing over the {river} finished?", "year"),
         ("Which waterway does the {name} span pass over?", "river")]),
    "lighthouse": (
        "{name} Lighthouse stands on a rocky headland outside the port of {place}. Its lamp was "
        "first lit in {year}, and for decades its keeper was {person}.",
        [("Who looked after the {name} beacon by {place}?", "person"),
         ("When did the {name} beacon begin shining?", "year"),
         ("Near which harbour is the {name} beacon?", "place")]),
    "festival": (
        "The {name} Festival is held every autumn in {place}. It was founded in {year} by the "
        "composer {person} and features folk music.",
        [("Which musician started the yearly {name} celebration in {place}?", "person"),
         ("Since when has the {name} celebration taken place?", "year"),
         ("Where does the {name} celebration happen?", "place")]),
    "company": (
        "{name} Industries is a manufacturer of bicycles headquartered in {place}. The firm was "
        "established in {year} by the entrepreneur {person}.",
        [("Who set up the {name} bike maker?", "person"),
         ("Where is the {name} cycle business based?", "place"),
         ("When did the {name} bike maker start out?", "year")]),
    "novel": (
        "{name} is a novel written by {person} and published in {year}. The story follows a "
        "family of sailors living in {place}.",
        [("Who is the author of the book {name}?", "person"),
         ("In which settlement is the {name} book set?", "place"),
         ("When did the {name} book come out?", "year")]),
    "mountain": (
        "Mount {name} rises over the valley of {place}. The earliest recorded ascent of its "
        "summit was made in {year} by the climber {person}.",
        [("Who got to the top of the {name} peak before anyone else?", "person"),
         ("When was the {name} peak first ascended?", "year"),
         ("Which town lies beneath the {name} peak?", "place")]),
    "ship": (
        "The {name} was a steamship launched in {year} at the shipyard of {place}. She was "
        "commanded by captain {person} on her first voyage.",
        [("Who was in charge of the vessel {name} on its maiden trip?", "person"),
         ("When did the vessel {name} go into the water?", "year"),
         ("Where was the vessel {name} built?", "place")]),
    "library": (
        "The {name} Library opened its doors in {year} in the centre of {place}. Its collection "
        "was assembled by the librarian {person}.",
        [("Who gathered the books held at the {name} archive in {place}?", "person"),
         ("When did the {name} archive begin welcoming readers?", "year"),
         ("In which town is the {name} archive?", "place")]),
    "dish": (
        "{name} is a traditional stew of the region around {place}. The recipe was written "
        "down in {year} by the cook {person}.",
        [("Who first recorded how to make {name}?", "person"),
         ("Which area does the {name} meal come from?", "place"),
         ("When was the {name} meal first described on paper?", "year")]),
    "observatory": (
        "The {name} Observatory sits on a hill overlooking {place}. It began operation in "
        "{year} under the direction of the astronomer {person}.",
        [("Who led the {name} stargazing station in its early days?", "person"),
         ("Since what year have telescopes at {name} been used?", "year"),
         ("Above which town is the {name} stargazing station?", "place")]),
}

_SYLLABLES = ("bra vel mor quil ton dar fen lis gor tha rin sol ver kan mel dro zan pel tor wen "
              "hal bes cor dun eth fal gri hov isk jor kel lum nar ost pry rud sev tav ulm yar "
              "zed ask bol cray dim").split()
_FIRST_NAMES = ("Ada Bruno Clara Dmitri Elena Felix Greta Hugo Ines Jonas Karin Lars Mila Nils "
                "Olga Pavel Rosa Stefan Tilda Viktor Wanda Yusuf Zora Anton Berta Carlo Dora "
                "Emil Frida Gustav").split()


def _name(rng: np.random.Generator, syllables: int) -> str:
  return "".join(rng.choice(_SYLLABLES, syllables)).capitalize()


def _unique_names(rng, count: int, syllables: tuple[int, int], taken: set[str]) -> list[str]:
  space = sum(len(_SYLLABLES) ** n for n in range(syllables[0], syllables[1] + 1))
  if len(taken) + count > space // 2:  # keep rejection sampling fast
    raise ValueError(f"{count} more names of {syllables} syllables would crowd the name space")
  names = []
  while len(names) < count:
    name = _name(rng, int(rng.integers(syllables[0], syllables[1] + 1)))
    if name not in taken:
      taken.add(name)
      names.append(name)
  return names


def make_corpus(num_docs: int, seed: int = 0, questions_per_doc: int = 1,
                shared_name_fraction: float = 0.2) -> tuple[list[Document], list[QAPair]]:
  """`num_docs` documents (ids `doc-000000`, ...) and `questions_per_doc` questions each.

  About `shared_name_fraction` of the documents reuse the previous document's name for an
  entity of another kind (a "Velmor Bridge" beside a "Velmor Festival"), so a question is only
  unambiguous through the paraphrased kind or its other details.
  """
  if not 1 <= questions_per_doc <= 3:
    raise ValueError(f"questions_per_doc must be 1..3, got {questions_per_doc}")
  rng = np.random.default_rng(seed)
  taken: set[str] = set()
  # Places, rivers and surnames repeat across documents, as they would in a real corpus.
  places = _unique_names(rng, max(4, num_docs // 20), (2, 3), taken)
  rivers = _unique_names(rng, max(4, num_docs // 20), (2, 3), taken)
  surnames = _unique_names(rng, max(4, num_docs // 10), (2, 3), taken)
  entities = _unique_names(rng, num_docs, (3, 4), taken)
  kinds = list(KINDS)
  width = max(6, len(str(num_docs - 1)))
  documents, qa = [], []
  previous_kind = None
  for i in range(num_docs):
    kind = kinds[int(rng.integers(len(kinds)))]
    if i and kind != previous_kind and rng.random() < shared_name_fraction:
      entities[i] = entities[i - 1]
    name, previous_kind = entities[i], kind
    fields = {
        "name": name,
        "place": places[int(rng.integers(len(places)))],
        "river": rivers[int(rng.integers(len(rivers)))],
        "person": f"{rng.choice(_FIRST_NAMES)} {surnames[int(rng.integers(len(surnames)))]}",
        "year": str(int(rng.integers(1700, 2000))),
    }
    doc_template, questions = KINDS[kind]
    doc_id = f"doc-{i:0{width}d}"
    documents.append(Document(doc_id, doc_template.format(**fields), title=f"{name} ({kind})"))
    for j in rng.permutation(len(questions))[:questions_per_doc]:
      template, answer_field = questions[j]
      qa.append(QAPair(template.format(**fields), fields[answer_field], doc_id))
  return documents, qa
