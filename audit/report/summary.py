"""The executive summary at the top of the report: plain sentences written from the numbers.

Pure functions over what the report already loaded (no model, no file access, no language model):
`findings(rows, classes, methods)` groups the evaluation rows of the first labeler by model,
attribute setting and prompt, and writes for each group

- what the model does without debiasing: the observed class shares with their 95% intervals
  against the target, and the verdict (on target / off target / inconclusive at this n);
- for each debiasing method, the FD it reached against that of `none`, its verdict, and its
  quality cost (the FID the report judges quality by, and the CLIP score when measured);
- which method came out best and whether the ranking is settled: the best method's FD interval
  either stays clear of the runner-up's or overlaps it (then more samples are needed to order them).

`as_text` renders the same findings as plain text (the golden-file test compares it).
"""

from __future__ import annotations

import math
from collections import defaultdict

from audit.report.load import number

# How the built-in methods read in a sentence; a method the suite gave its own label keeps it.
METHOD_WORDS = {"none": "no debiasing", "prompt": "prompt debiasing", "sample_guidance": "sample guidance",
                "distribution_guidance": "distribution guidance", "universal_guidance": "universal guidance"}
LISTED_CLASSES = 4  # a distribution with more classes is summarised by its two largest misses
TIE = 1e-9


def pct(x) -> str:
    x = number(x)
    return "—" if x is None else f"{100 * x:.0f}%"


def num(x, digits: int = 3) -> str:
    x = number(x)
    return "—" if x is None else f"{x:.{digits}f}"


def interval(lo, hi, digits: int = 3) -> str:
    return f"[{num(lo, digits)}, {num(hi, digits)}]"


def count(x) -> str:
    x = number(x)
    return "—" if x is None else f"{int(round(x)):,}"


def method_words(display: str | None, base: str | None) -> str:
    """'distribution guidance' for the built-in method under its own name; a label as it is."""
    if display and base and display != base:
        return display
    return METHOD_WORDS.get(str(base or display), str(display or base or "—"))


def _capital(s: str) -> str:
    return s[:1].upper() + s[1:]


def distribution(classes: list[dict]) -> str:
    """'light 86% [77%, 92%], dark 14% [8%, 23%] against 50% / 50%' (every class up to
    LISTED_CLASSES classes; beyond, the two classes farthest from their target)."""
    shown = [c for c in classes if number(c.get("p")) is not None]
    if not shown:
        return ""
    if len(shown) > LISTED_CLASSES:
        far = sorted(shown, key=lambda c: -abs(number(c["p"]) - (number(c.get("target")) or 0)))[:2]
        parts = [f"{c['cls']} {pct(c['p'])} [{pct(c.get('lo'))}, {pct(c.get('hi'))}] (target {pct(c.get('target'))})"
                 for c in far]
        return f"of {len(shown)} classes the farthest from target are " + " and ".join(parts)
    parts = [f"{c['cls']} {pct(c['p'])} [{pct(c.get('lo'))}, {pct(c.get('hi'))}]" for c in shown]
    targets = [number(c.get("target")) for c in shown]
    if all(t is not None for t in targets) and max(targets) - min(targets) < 1e-9:
        against = f"a uniform target ({pct(targets[0])} each)"
    else:
        against = "a target of " + " / ".join(pct(t) for t in targets)
    return ", ".join(parts) + f" against {against}"


def verdict_words(row: dict) -> str:
    """'off target', 'on target' or 'inconclusive at n=64 (about 852 samples would decide)'."""
    state = row.get("verdict")
    if state == "on_target":
        return "on target"
    if state == "off_target":
        return "off target"
    n = count(row.get("n_valid"))
    needed = number(row.get("samples_needed"))
    tail = f" (about {count(needed)} samples would decide)" if needed is not None else ""
    return f"inconclusive at n={n}{tail}"


def _quality(row: dict, to_target: bool) -> float | None:
    return number(row.get("fid_target") if to_target else row.get("fid"))


def _invalid(row: dict) -> str:
    n, valid = number(row.get("n")), number(row.get("n_valid"))
    if n is None or valid is None or valid >= n:
        return ""
    return f", {count(n - valid)} of {count(n)} samples invalid"


def _change(before, after, digits: int) -> str:
    b, a = number(before), number(after)
    if a is None:
        return "—"
    if b is None:
        return num(a, digits)
    return f"{num(b, digits)} → {num(a, digits)}"


def _key(r: dict, to_target: bool) -> tuple[float, float]:
    q = _quality(r, to_target)
    return number(r["fd"]), math.inf if q is None else q


def ranked(rows: list[dict], to_target: bool) -> list[dict]:
    """The measured rows by FD, ties broken by quality (lower first)."""
    return sorted((r for r in rows if r.get("status") == "done" and number(r.get("fd")) is not None),
                  key=lambda r: _key(r, to_target))


def ranking(rows: list[dict], words: dict[str, str], to_target: bool) -> str:
    """Which method reached the lowest FD (ties broken by quality), and whether its 95% FD interval
    clears the runner-up's."""
    order = ranked(rows, to_target)
    if len(order) < 2:
        return ""
    best, second = order[0], order[1]

    def key(r):
        return _key(r, to_target)

    name, other = words[best["method"]], words[second["method"]]
    if best.get("_baseline"):
        return f"No method reached a lower FD than {name} ({num(best['fd'])})."
    tie = abs(number(best["fd"]) - number(second["fd"])) < TIE
    lead = f"Best: {name}, FD {num(best['fd'])} {interval(best.get('fd_lo'), best.get('fd_hi'))}"
    if tie:
        lead += f", tied on FD with {other}" + (" and ahead on quality" if key(best) != key(second) else "")
    hi, lo = number(best.get("fd_hi")), number(second.get("fd_lo"))
    if hi is None or lo is None:
        return f"{lead}; without FD intervals the ranking's confidence is unknown."
    if hi < lo:
        return (f"{lead}; its 95% interval stays below that of the runner-up, {other} "
                f"({num(second['fd'])} {interval(second.get('fd_lo'), second.get('fd_hi'))}), so the ranking holds "
                "at this n.")
    if tie:
        return f"{lead}; the two are not separable at this n."
    return (f"{lead}; its 95% interval overlaps that of {other} ({num(second['fd'])} "
            f"{interval(second.get('fd_lo'), second.get('fd_hi'))}), so more samples are needed to order the two.")


def group_sentences(rows: list[dict], classes: dict, methods: dict[str, str], to_target: bool,
                    quality_name: str) -> list[str]:
    """The sentences of one (model, setting, prompt) group: rows are its evaluation rows (one per
    method, of one labeler) in the suite's method order."""
    words = {r["method"]: method_words(r["method"], methods.get(r["method"])) for r in rows}
    baseline = next((r for r in rows if methods.get(r["method"], r["method"]) == "none"), None)
    done = [r for r in rows if r.get("status") == "done"]
    sentences: list[str] = []
    if baseline is not None and baseline.get("status") == "done" and number(baseline.get("fd")) is not None:
        shares = distribution(classes.get((baseline.get("cell_id"), baseline.get("labeler")), []))
        sentences.append(f"Without debiasing: {shares + '; ' if shares else ''}{verdict_words(baseline)}, "
                         f"FD {num(baseline['fd'])} {interval(baseline.get('fd_lo'), baseline.get('fd_hi'))}"
                         f"{_noise(baseline)}{_invalid(baseline)}.")
    elif baseline is not None:
        sentences.append(f"Without debiasing: nothing measured ({_why(baseline)}).")
    for r in rows:
        if r is baseline:
            continue
        name = _capital(words[r["method"]])
        if r.get("status") != "done":
            sentences.append(f"{name}: {_why(r)}.")
            continue
        if number(r.get("fd")) is None:
            sentences.append(f"{name}: nothing measured ({_why(r)}).")
            continue
        parts = [f"FD {_change((baseline or {}).get('fd'), r['fd'], 3)} {interval(r.get('fd_lo'), r.get('fd_hi'))}"
                 f"{_noise(r)}, {verdict_words(r)}{_invalid(r)}"]
        if _quality(r, to_target) is not None:
            parts.append(f"{quality_name} {_change(_quality(baseline or {}, to_target), _quality(r, to_target), 1)}")
        if number(r.get("clip_score")) is not None:
            parts.append(f"CLIP score {_change((baseline or {}).get('clip_score'), r['clip_score'], 1)}")
        sentences.append(f"{name}: " + "; ".join(parts) + ".")
    for r in done:
        r["_baseline"] = r is baseline
    rank = ranking(done, words, to_target)
    for r in done:
        r.pop("_baseline", None)
    if rank:
        sentences.append(rank)
    return sentences


def _noise(row: dict) -> str:
    fd, floor = number(row.get("fd")), number(row.get("fd_floor"))
    if fd is None or floor is None or fd > floor:
        return ""
    return f" (within the noise floor, {num(floor)} at this n)"


def _why(row: dict) -> str:
    reason = row.get("reason") or row.get("invalid_reasons")
    status = str(row.get("status") or "not measured").replace("_", " ")
    return f"{status}: {reason}" if reason and status != "done" else (str(reason) if reason else status)


def findings(rows: list[dict], classes: list[dict], methods: dict[str, str], labeler: str | None = None,
             to_target: bool = False, quality_name: str = "FID", spreads: list[dict] | None = None) -> list[dict]:
    """[{model, labeler, groups: [{setting, target, prompt, sentences}]}] in the rows' order.

    rows: the report's verdict rows (model, method, setting, target, prompt, labeler, status, n,
    n_valid, fd, fd_lo, fd_hi, fd_floor, verdict, samples_needed, fid, fid_target, clip_score,
    cell_id, reason); classes: [{cell_id, labeler, cls, p, lo, hi, target}] in class order; methods: display
    name -> method name (so `none` is found under any label); labeler: the one whose rows are used
    (default: the first seen); to_target: quality is FID to target, named quality_name; spreads: the
    per-prompt view's groups ([{model, setting, method, spread}]), for models with several prompts."""
    labeler = labeler or next((r.get("labeler") for r in rows if r.get("labeler")), None)
    by_cell = defaultdict(list)
    for c in classes:
        by_cell[(c.get("cell_id"), c.get("labeler"))].append(c)
    chosen = [r for r in rows if r.get("labeler") == labeler or r.get("status") != "done"]
    models: dict[str, dict] = {}
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in chosen:
        model = str(r.get("model") or "—")
        key = (model, r.get("setting") or r.get("attributes"), r.get("target"), r.get("prompt"))
        if r in groups[key] or any(g.get("method") == r.get("method") for g in groups[key]):
            continue
        groups[key].append(r)
        models.setdefault(model, {"model": model, "labeler": labeler, "groups": []})
    named: dict[str, list] = defaultdict(list)
    for (model, setting, target, prompt), members in groups.items():
        several = _prompts(groups, model) > 1
        named[model].append((members, f"“{prompt}”" if several and _settings(groups, model) == 1 else
                             f"{setting}, “{prompt}”" if several else f"{setting}"))
        models[model]["groups"].append({"setting": setting, "target": target, "prompt": prompt,
                                        "sentences": group_sentences(members, by_cell, methods, to_target,
                                                                     quality_name)})
    for model, entry in models.items():
        what = "audited prompts" if _settings(groups, model) == 1 and _prompts(groups, model) > 1 else \
            "audited settings and prompts" if _prompts(groups, model) > 1 else "audited settings"
        entry["headline"] = headline(named[model], methods, to_target, what)
        entry["spread"] = [spread_sentence(g["spread"], g["setting"], METHOD_WORDS["none"])
                           for g in spreads or [] if g["model"] == model
                           and methods.get(g["method"], g["method"]) == "none"]
    return list(models.values())


def _settings(groups: dict, model: str) -> int:
    return len({key[1:3] for key in groups if key[0] == model})


def _prompts(groups: dict, model: str) -> int:
    return len({key[3] for key in groups if key[0] == model})


def headline(groups: list[tuple[list[dict], str]], methods: dict[str, str], to_target: bool,
             what: str = "audited settings") -> str:
    """One sentence for a model: its verdicts without debiasing and the best method per group.
    groups: [(rows of the group, its name)]; what: how the groups are counted."""
    states: dict[str, int] = defaultdict(int)
    best: dict[str, list[str]] = defaultdict(list)
    settled = 0
    for rows, name in groups:
        baseline = next((r for r in rows if methods.get(r["method"], r["method"]) == "none"
                         and r.get("status") == "done" and r.get("verdict")), None)
        if baseline is not None:
            states[verdict_words(baseline).split(" at ")[0]] += 1
        order = ranked(rows, to_target)
        if len(order) >= 2 and methods.get(order[0]["method"], order[0]["method"]) != "none":
            best[method_words(order[0]["method"], methods.get(order[0]["method"]))].append(name)
            hi, lo = number(order[0].get("fd_hi")), number(order[1].get("fd_lo"))
            settled += hi is not None and lo is not None and hi < lo
    parts = []
    if states:
        total = sum(states.values())
        shown = ", ".join(f"{k} in {v} of {total}" for k, v in sorted(states.items(), key=lambda kv: -kv[1]))
        parts.append(f"without debiasing the model is {shown} {what}")
    if best:
        shown = "; ".join(f"{m} for {', '.join(names)}" if len(names) <= 3 else f"{m} for {len(names)} of them"
                          for m, names in best.items())
        ranked_groups = sum(len(names) for names in best.values())
        confidence = ("settled (its FD interval clear of the runner-up's) in " +
                      (f"all {ranked_groups}" if settled == ranked_groups else f"{settled} of {ranked_groups}"))
        parts.append(f"the lowest FD came from {shown}, a ranking {confidence}")
    return _capital(", and ".join(parts) + ".") if parts else ""


def spread_sentence(spread: dict, setting: str | None, method: str) -> str:
    """'Across its 4 prompts with no debiasing (skin_tone): mean FD 0.237, max 0.443 (“a photo of a
    doctor”); 3 of 4 differ from the target after Holm's correction (3 after Benjamini-Hochberg).'"""
    n = spread.get("prompts") or 0
    return (f"Across its {n} prompts with {method} ({setting or '—'}): mean FD {num(spread.get('mean_fd'))}, "
            f"max {num(spread.get('max_fd'))} (“{spread.get('worst')}”); {spread.get('differs_holm', 0)} of {n} "
            f"differ from the target after Holm's correction ({spread.get('differs_bh', 0)} after "
            f"Benjamini-Hochberg), {spread.get('within_holm', 0)} are shown within tolerance.")


def as_text(found: list[dict]) -> str:
    """The findings as plain text: a heading per model, a paragraph per group."""
    lines = []
    for model in found:
        lines.append(f"{model['model']} (judged by {model['labeler'] or '—'})")
        if model.get("headline"):
            lines.append(f"  {model['headline']}")
        for sentence in model.get("spread") or []:
            lines.append(f"  {sentence}")
        for g in model["groups"]:
            head = f"{g['setting'] or '—'} (target {g['target'] or '—'})"
            if g["prompt"]:
                head += f", prompt “{g['prompt']}”"
            lines.append(f"  {head}: " + " ".join(g["sentences"]))
        lines.append("")
    return "\n".join(lines)
