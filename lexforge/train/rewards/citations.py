"""Citation accuracy: every statute/section/article/regulation/case cited in an answer must exist in the
item's context (its prompt text and ``context`` field) or in a supplied index of allowed citations.

Citation forms are normalised before comparison: ``s. 2``, ``s.2``, ``section 2`` and ``S 2`` are all
``s 2``; ``s.2(1)(a)`` is ``s 2(1)(a)``; ``ss.2 and 5`` is ``s 2`` and ``s 5``; ``Limitation Act 1980, s.2``
and ``section 2 of the Limitation Act 1980`` carry the Act. Cases: neutral citations and law reports
(``[2019] UKSC 5``, ``[1932] AC 562``)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from lexforge.train.rewards.core import SKIP, Fail, is_bool, is_str, one_of, register_batch_reward

#: provision kinds -> canonical short form
_KINDS = {"s": "s", "ss": "s", "sec": "s", "secs": "s", "section": "s", "sections": "s",
          "sch": "sch", "schs": "sch", "schedule": "sch", "schedules": "sch",
          "art": "art", "arts": "art", "article": "art", "articles": "art",
          "reg": "reg", "regs": "reg", "regulation": "reg", "regulations": "reg",
          "para": "para", "paras": "para", "paragraph": "para", "paragraphs": "para",
          "r": "r", "rr": "r", "rule": "r", "rules": "r", "pt": "pt", "part": "pt", "chapter": "ch"}
_NUM = r"\d+[A-Z]{0,2}(?:\.\d+)*(?:\s*\(\s*\w{1,4}\s*\))*"
_PROVISION = re.compile(
    r"(?<![\w])(?P<kind>sections?|secs?|ss|s|schedules?|schs?|sch|articles?|arts?|art|regulations?|regs?|reg|"
    r"paragraphs?|paras?|para|rules?|rr|r|part|pt|chapter)\b\.?\s*"
    r"(?P<nums>" + _NUM + r"(?:\s*(?:,|and|&|or|to|-|–)\s*" + _NUM + r")*)", re.IGNORECASE)
_ONE_NUM = re.compile(r"(\d+[A-Z]{0,2}(?:\.\d+)*)((?:\s*\(\s*\w{1,4}\s*\))*)", re.IGNORECASE)
_ACT = r"((?:[A-Z][\w'’]*\s+(?:(?:and|of|the|for|to|in|on)\s+)*)+Act\s+\d{4})"
_ACT_AFTER = re.compile(r"^\s*(?:of\s+)?(?:the\s+)?" + _ACT)
_ACT_BEFORE = re.compile(_ACT + r"\s*,?\s*$")
_CASE = re.compile(r"[\[(](\d{4})[\])]\s+(?:(\d+)\s+)?([A-Z][A-Za-z]*(?:\s+(?:Civ|Crim|Admin|Ch|QB|KB|Fam|Comm|"
                   r"Pat|TCC|IPEC|Costs))?)\s+(\d+)")


@dataclass(frozen=True)
class Citation:
    kind: str  # s | sch | art | reg | para | r | pt | ch | case
    number: str  # "2", "4A", "3.4"; for a case: the normalised citation
    sub: tuple[str, ...] = ()  # ("1", "a") for (1)(a)
    act: str | None = None  # "limitation act 1980"

    def __str__(self) -> str:
        if self.kind == "case":
            return self.number
        s = f"{self.kind} {self.number}" + "".join(f"({x})" for x in self.sub)
        return f"{self.act}, {s}" if self.act else s


def _act_name(text: str) -> str:
    return re.sub(r"^the\s+", "", " ".join(text.split()).lower())


def _expand(nums: str) -> list[tuple[str, tuple[str, ...]]]:
    parts = _ONE_NUM.findall(nums)
    out = [(n.upper() if not n.isdigit() else n, tuple(re.findall(r"\(\s*(\w{1,4})\s*\)", sub.lower())))
           for n, sub in parts]
    m = re.fullmatch(r"\s*(\d+)\s*(?:to|-|–)\s*(\d+)\s*", nums)
    if m and 0 < int(m.group(2)) - int(m.group(1)) <= 20:  # "ss 2-5": every section of the range
        out = [(str(k), ()) for k in range(int(m.group(1)), int(m.group(2)) + 1)]
    return out


def find_citations(text: str) -> list[Citation]:
    """Every citation in ``text``, normalised, in order of appearance (duplicates kept once)."""
    text = str(text or "")
    found: list[Citation] = []
    for m in _PROVISION.finditer(text):
        kind = _KINDS[m.group("kind").lower()]
        if kind in ("r", "s") and len(m.group("kind")) == 1 and not re.match(r"\d", m.group("nums")):
            continue
        after = _ACT_AFTER.match(text[m.end():m.end() + 120])
        before = _ACT_BEFORE.search(text[max(0, m.start() - 120):m.start()])
        act = _act_name((after or before).group(1)) if (after or before) else None
        for number, sub in _expand(m.group("nums")):
            found.append(Citation(kind, number, sub, act))
    for m in _CASE.finditer(text):
        year, vol, report, page = m.groups()
        found.append(Citation("case", f"[{year}] {vol + ' ' if vol else ''}{' '.join(report.split())} {page}".lower()))
    return list(dict.fromkeys(found))


def supported(c: Citation, allowed: set[Citation], context_text: str = "") -> bool:
    """``c`` exists in ``allowed``: the same provision (or a broader one that holds it, or a narrower one of it),
    of the same Act when both name one (an allowed provision naming no Act matches any Act)."""
    if c in allowed:
        return True
    for a in allowed:
        if (a.kind, a.number) != (c.kind, c.number) or c.kind == "case":
            continue
        if c.act and a.act and c.act != a.act:
            continue
        if a.sub[:len(c.sub)] == c.sub or c.sub[:len(a.sub)] == a.sub:
            return True
    return False


@lru_cache(maxsize=16)
def load_index(path: str) -> frozenset[Citation]:
    """Allowed citations from a text file (one per line; '#' comments) or JSON lines (a string, or an object
    with "citation"). Loaded once per process. A line with no recognisable citation is an error."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"params.index: citation index {path} not found (a text or JSON-lines file of citations)")
    out: set[Citation] = set()
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line[0] in "{\"":
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"params.index: {path}, line {i}: not JSON ({e})") from None
            line = obj if isinstance(obj, str) else str(obj.get("citation", "")) if isinstance(obj, dict) else ""
        cites = find_citations(line)
        if not cites:
            raise ValueError(f"params.index: {path}, line {i}: no citation recognised in {line[:80]!r} "
                             f"(write e.g. 'Limitation Act 1980, s.2' or '[2019] UKSC 5')")
        out.update(cites)
    return frozenset(out)


def context_text(example: dict) -> str:
    parts = [example.get("prompt_text"), example.get("context")]
    return "\n".join(p if isinstance(p, str) else json.dumps(p) for p in parts if p)


def citation_score(completion: str, allowed: set[Citation], params: dict):
    """(score or SKIP, cited, unsupported). score = share of cited references that are supported (0 when any is
    invented and invented=zero); an answer citing nothing scores per no_citation (zero | one | skip)."""
    cited = find_citations(completion)
    bad = [c for c in cited if not supported(c, allowed)]
    if not cited:
        mode = params.get("no_citation", "zero")
        return (SKIP if mode == "skip" else 1.0 if mode == "one" else 0.0), cited, bad
    if bad and params.get("invented", "share") == "zero":
        return 0.0, cited, bad
    return (len(cited) - len(bad)) / len(cited), cited, bad


def _citation_accuracy(params: dict, context: dict):
    index = load_index(params["index"]) if params.get("index") else frozenset()
    use_context = params.get("use_context", True)

    def run(completions: list[str], examples: list[dict]) -> list:
        out = []
        for c, ex in zip(completions, examples):
            allowed = set(index)
            if use_context:
                text = context_text(ex)
                if not text and not index:
                    out.append(Fail("no context to check citations against: the example has no prompt_text or "
                                    "context, and no params.index is set"))
                    continue
                allowed.update(find_citations(text))
            out.append(citation_score(c, allowed, params)[0])
        return out

    return run


def _check(params: dict):
    if params.get("use_context") is False and not params.get("index"):
        return "use_context", "false needs params.index (else no citation could ever be supported)"
    return None


register_batch_reward("citation_accuracy", _citation_accuracy,
                      {"index": is_str, "use_context": is_bool, "no_citation": one_of("zero", "one", "skip"),
                       "invented": one_of("share", "zero")}, check=_check,
                      doc="Share of cited provisions/cases found in the context or the index.")
