"""What changed between two runs' configurations, as the user names it (``--reduction mean -> sum``)."""

from __future__ import annotations

WHAT_CHANGED = {"card": "the model card's {key}", "weights": "the model's weights (their content)",
                "glmscore": "the glmscore version", "runtime": "the runtime's {key}", "backend": "--backend",
                "pooling": "--pooling"}


def changes(before: dict, after: dict) -> list[str]:
    """The differences between two fingerprint identities, each as the user names it (``the model kmer4
    -> kmer5``, ``--reduction mean -> sum``, ``the model's weights (their content)``); what follows from
    another model (its card's fields, backend, weights, runtime) is not listed beside it."""
    said = []
    card_a, card_b = before.get("card", {}), after.get("card", {})
    new_model = card_a.get("id") != card_b.get("id")
    if new_model:
        said.append(f"the model {_short(card_a.get('id'))} -> {_short(card_b.get('id'))}")
    for key in ("job", "options", "benchmark_options", "pooling", "backend", "weights", "card", "runtime", "glmscore"):
        a, b = before.get(key), after.get(key)
        if a == b or (new_model and key in ("backend", "weights", "card", "runtime")):
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            said += [f"{WHAT_CHANGED[key].format(key=k) if key in WHAT_CHANGED else '--' + k.replace('_', '-')} {v}"
                     for k, v in _pairs(a, b)]
        elif key == "weights":
            said.append(WHAT_CHANGED[key])
        else:
            said.append(f"{WHAT_CHANGED[key]} {_short(a)} -> {_short(b)}")
    return said


def _pairs(a: dict, b: dict):
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            yield k, f"{_short(a.get(k))} -> {_short(b.get(k))}"


def _short(value) -> str:
    text = "none" if value is None else ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."
