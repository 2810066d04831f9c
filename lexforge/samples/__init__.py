"""Sample legal data written by the project (no download): training, preference, GRPO and eval sets.

``write_samples(out_dir)`` regenerates everything deterministically from :mod:`lexforge.samples.statutes`;
the generated files ship in ``lexforge/samples/data`` (``sample_path(...)`` finds them).

- ``legal_qa.jsonl``: ~160 chat rows (OpenAI ``messages``), grounded in statutory text, including
  deliberately malformed rows as real exports have (role aliases, missing turns, empty content,
  wrong types, invalid JSON, duplicates, stray whitespace, a non-UTF-8 line).
- ``legal_pref.jsonl``: DPO preference pairs (``prompt``/``chosen``/``rejected``).
- ``legal_grpo.jsonl``: GRPO rows (``prompt`` + ``reference``).
- ``legalbench/tasks/<task>/{train,test}.tsv`` + ``base_prompt.txt``: closed (yes/no, multiple choice)
  and open (with rubric) eval tasks in LegalBench's layout. Test rows are fact patterns and MCQs that
  do not appear in the training set.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from lexforge.samples.statutes import MCQ, PROVISIONS

DATA_DIR = Path(__file__).parent / "data"
SYSTEM = "You are a legal research assistant for England and Wales. Answer concisely and cite the statute."


def sample_path(*parts: str) -> Path:
    """Path of a shipped sample file, e.g. ``sample_path("legal_qa.jsonl")``."""
    p = DATA_DIR.joinpath(*parts)
    if not p.exists():
        raise FileNotFoundError(f"sample {p} missing; run `python -m lexforge.samples` to regenerate")
    return p


def statute_corpus() -> list[str]:
    texts: list[str] = []
    for p in PROVISIONS:
        texts.append(f"{p['cite']}: {p['text']}")
        for q, a in p["qas"]:
            texts += [q, a]
        texts += [p["yes"][0], p["no"][0], "Yes", "No"]
    for q, opts, _, _ in MCQ:
        texts.append(q + " " + " ".join(opts))
    return texts


def _chat_rows() -> list[dict]:
    rows: list[dict] = []
    for p in PROVISIONS:
        (q1, a1), (q2, a2) = p["qas"]
        rows.append({"messages": [{"role": "user", "content": q1}, {"role": "assistant", "content": a1}]})
        rows.append({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q2},
                                  {"role": "assistant", "content": a2}]})
        rows.append({"messages": [
            {"role": "user", "content": f"Read {p['cite']}: \"{p['text']}\"\n\nQuestion: {q1}"},
            {"role": "assistant", "content": a1}]})
        rows.append({"messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": q1}, {"role": "assistant", "content": a1},
            {"role": "user", "content": "Which provision is that?"},
            {"role": "assistant", "content": f"{p['cite']}. It provides: {p['text']}"}]})
        rows.append({"messages": [{"role": "user", "content": f"Summarise {p['cite']} in one sentence."},
                                  {"role": "assistant", "content": p["text"]}]})
    return rows


def _malformed_lines(rows: list[dict]) -> list[tuple[int, str]]:
    """(insert position, raw line) pairs: the mess a real export contains."""
    bad = [
        # role aliases (repairable)
        {"messages": [{"role": "human", "content": "What does s.2 of the Limitation Act 1980 cover?"},
                      {"role": "gpt", "content": "Actions founded on tort: six years from accrual."}]},
        {"messages": [{"role": "User", "content": "Is a deed a specialty?"},
                      {"role": "bot", "content": "Yes; actions on it have a twelve-year limit (Limitation Act 1980, s.8)."}]},
        # role field holding the content (repairable)
        {"messages": [{"user": "What duty does s.49 of the Consumer Rights Act 2015 imply?"},
                      {"assistant": "That the trader performs the service with reasonable care and skill."}]},
        # stray whitespace / non-breaking spaces (repairable)
        {"messages": [{"role": "user", "content": "  What is the limitation period\u00a0for  defamation?  "},
                      {"role": "assistant", "content": "One year from accrual (Limitation Act 1980, s.4A).\r\n"}]},
        # missing assistant turn (drop)
        {"messages": [{"role": "user", "content": "What is the notice period for 3 years' service?"}]},
        # empty content (drop)
        {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "Six years."}]},
        # wrong types (drop)
        {"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": ["twelve", "years"]}]},
        {"messages": "user: what is theft? assistant: dishonest appropriation"},
        # missing messages key (drop)
        {"prompt": "What is theft?", "completion": "Dishonest appropriation..."},
    ]
    lines = [json.dumps(b, ensure_ascii=False) for b in bad]
    lines.append('{"messages": [{"role": "user", "content": "Truncated export row')  # invalid JSON (drop)
    lines.append(json.dumps(rows[0], ensure_ascii=False))  # exact duplicate (dedupe)
    lines.append(json.dumps(rows[5], ensure_ascii=False).replace("?", " ?"))  # near duplicate (dedupe)
    rng = random.Random(7)
    return [(rng.randrange(1, len(rows)), line) for line in lines]


def write_samples(out_dir: Path = DATA_DIR) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = _chat_rows()
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    for pos, raw in sorted(_malformed_lines(rows), key=lambda t: -t[0]):
        lines.insert(pos, raw)
    qa = out_dir / "legal_qa.jsonl"
    with qa.open("wb") as f:
        for i, line in enumerate(lines):
            f.write(line.encode("utf-8") + b"\n")
            if i == 40:  # one line of Latin-1 bytes from a legacy system (non-UTF-8: drop)
                f.write('{"messages": [{"role": "user", "content": "Caf\xe9 licence?"}, '
                        '{"role": "assistant", "content": "See the Licensing Act 2003."}]}\n'.encode("latin-1"))

    pref = out_dir / "legal_pref.jsonl"
    with pref.open("w", encoding="utf-8") as f:
        for p in PROVISIONS:
            for q, a in p["qas"]:
                wrong = a.replace("six", "two").replace("Six", "Two").replace("twelve", "five").replace("Yes", "No")
                if wrong == a:
                    wrong = "There is no statutory rule on this point; it is entirely up to the parties."
                f.write(json.dumps({"prompt": q, "chosen": a, "rejected": wrong}, ensure_ascii=False) + "\n")

    grpo = out_dir / "legal_grpo.jsonl"
    with grpo.open("w", encoding="utf-8") as f:  # questions + reference answers (never the eval fact patterns)
        for p in PROVISIONS:
            for q, a in p["qas"]:
                f.write(json.dumps({"prompt": q, "reference": a}, ensure_ascii=False) + "\n")

    tasks = out_dir / "legalbench" / "tasks"
    _write_yes_no(tasks / "statute_yes_no")
    _write_mcq(tasks / "statute_mcq")
    _write_open(tasks / "statute_explain")
    return {"chat": qa, "preference": pref, "grpo": grpo, "legalbench": tasks}


def _write_tsv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        for r in rows:
            w.writerow(r)


def _write_yes_no(d: Path) -> None:
    items = []
    for p in PROVISIONS:
        items.append([p["yes"][0], "Yes", p["id"]])
        items.append([p["no"][0], "No", p["id"]])
    rng = random.Random(11)
    rng.shuffle(items)
    train, test = items[:4], items[4:]
    hdr = ["index", "text", "answer", "provision"]
    _write_tsv(d / "train.tsv", hdr, [[i] + r for i, r in enumerate(train)])
    _write_tsv(d / "test.tsv", hdr, [[i] + r for i, r in enumerate(test)])
    shots = "\n\n".join(f"Question: {t}\nAnswer: {a}" for t, a, _ in train)
    (d / "base_prompt.txt").write_text(
        "Answer each question about the law of England and Wales with Yes or No.\n\n"
        f"{shots}\n\nQuestion: {{{{text}}}}\nAnswer:", encoding="utf-8")


def _write_mcq(d: Path) -> None:
    rows = []
    for i, (q, opts, ans, pid) in enumerate(MCQ):
        rows.append([i, q, *opts, ans, pid])
    hdr = ["index", "text", "A", "B", "C", "D", "answer", "provision"]
    _write_tsv(d / "train.tsv", hdr, rows[:2])
    _write_tsv(d / "test.tsv", hdr, [[i] + r[1:] for i, r in enumerate(rows[2:])])
    shots = "\n\n".join(f"Question: {r[1]}\nA. {r[2]}\nB. {r[3]}\nC. {r[4]}\nD. {r[5]}\nAnswer: {r[6]}" for r in rows[:2])
    (d / "base_prompt.txt").write_text(
        "Choose the correct option (A, B, C or D).\n\n"
        f"{shots}\n\nQuestion: {{{{text}}}}\nA. {{{{A}}}}\nB. {{{{B}}}}\nC. {{{{C}}}}\nD. {{{{D}}}}\nAnswer:",
        encoding="utf-8")


def _write_open(d: Path) -> None:
    rows = []
    for i, p in enumerate(PROVISIONS[::3]):
        rubric = (f"Award 1 point each for: (a) citing {p['cite']}; (b) stating the rule accurately: "
                  f"{p['text'][:160]}{'...' if len(p['text']) > 160 else ''}; (c) applying it to the question "
                  f"without inventing facts. Score 0-3.")
        q = f"Explain, for a client with no legal training, what {p['cite']} provides and when it matters."
        rows.append([i, q, p["text"], rubric, p["id"]])
    hdr = ["index", "text", "answer", "rubric", "provision"]
    _write_tsv(d / "train.tsv", hdr, rows[:1])
    _write_tsv(d / "test.tsv", hdr, [[i] + r[1:] for i, r in enumerate(rows[1:])])
    (d / "base_prompt.txt").write_text("{{text}}", encoding="utf-8")


if __name__ == "__main__":  # pragma: no cover
    for kind, path in write_samples().items():
        print(f"{kind}: {path}")
