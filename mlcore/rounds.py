"""The explicit per-round scenario (what config/rounds.yaml holds), its validation, and schedules.

A round is `{id: r03, shift: [...], mix: 1.0, size: 200, seed: 0}`: `mix` is the fraction of
the batch that is shifted (the rest is clean), `size` and `seed` are optional overrides.
Schedule generators return such explicit round lists, so what runs is always written down.

A round's `offset` (where its batch starts in the seeded stream order, mlcore/stream.py) is
never written by hand: it is the sum of the earlier rounds' sizes, so the rounds of a file
take disjoint rows. `parse_rounds(raw, default_size)` assigns it in file order; the
workflow, which runs each round from a one-round document, computes it the same way and
carries it next to the entry: `{rounds: [entry], offset: N}`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .seeding import rng_for
from .shifts import Shift, ShiftError, parse_shift_list, shift_tag
from .yamlfile import check_schema, read_yaml


class RoundsError(ValueError):
    """The rounds spec is wrong; the message names the field."""


@dataclass(frozen=True)
class RoundSpec:
    id: str
    shifts: tuple[Shift, ...] = ()
    mix: float = 1.0
    size: int | None = None
    seed: int | None = None
    offset: int | None = None  # start in the stream order; None (a round on its own) = 0

    @property
    def tag(self) -> str:
        tag = shift_tag(self.shifts)
        return tag if self.mix >= 1.0 or not self.shifts else f"{tag}@{self.mix:g}"


def _spec(raw: dict) -> RoundSpec:
    """A round from an entry that passed the schema (shift steps built by mlcore.shifts)."""
    size, seed = raw.get("size"), raw.get("seed")
    return RoundSpec(raw["id"], parse_shift_list(raw.get("shift", [])), float(raw.get("mix", 1.0)), size, seed)


def _document_offset(raw: Any) -> tuple[Any, int | None]:
    """Split the workflow's `offset` off a one-round document: it is not part of rounds.yaml
    (whose schema refuses it), so it is checked here, and only next to exactly one round."""
    if not isinstance(raw, dict) or "offset" not in raw:
        return raw, None
    rest = {key: value for key, value in raw.items() if key != "offset"}
    offset = raw["offset"]
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise RoundsError(f"offset: must be an integer >= 0, got {offset!r}")
    if not isinstance(rest.get("rounds"), list) or len(rest["rounds"]) != 1:
        raise RoundsError("offset: only a one-round document (written by the workflow) carries an offset")
    return rest, offset


def assign_offsets(specs: list[RoundSpec], default_size: int) -> list[RoundSpec]:
    """Each round's start in the stream order: the sizes of the rounds before it, in file order.

    Depends on the earlier rounds' sizes only, so editing a round's shift moves no one.
    """
    out, offset = [], 0
    for spec in specs:
        out.append(replace(spec, offset=offset))
        offset += spec.size or default_size
    return out


def parse_rounds(raw: Any, default_size: int | None = None) -> list[RoundSpec]:
    """Validate a parsed rounds document `{rounds: [...]}` against workflow/schemas/rounds.schema.yaml
    (the one validator of rounds.yaml); then the rule a schema cannot state: ids are unique.

    With `default_size` (the edge's batch size) every round gets its offset (`assign_offsets`);
    a workflow document's own `offset` is kept as written.
    """
    raw, offset = _document_offset(raw)
    check_schema(raw, "rounds.schema.yaml", RoundsError)
    seen: dict[str, int] = {}
    for i, entry in enumerate(raw["rounds"]):
        if entry["id"] in seen:
            raise RoundsError(f"rounds[{i}].id: duplicate id {entry['id']!r} (first at rounds[{seen[entry['id']]}])")
        seen[entry["id"]] = i
    try:
        specs = [_spec(entry) for entry in raw["rounds"]]
    except ShiftError as exc:  # a rule of mlcore.shifts beyond the schema (e.g. weights all zero)
        raise RoundsError(str(exc)) from exc
    if offset is not None:
        return [replace(specs[0], offset=offset)]
    return specs if default_size is None else assign_offsets(specs, default_size)


def parse_round(raw: Any) -> RoundSpec:
    """One round entry (tests, benchmarks), checked by the same schema as a whole rounds file."""
    return parse_rounds({"rounds": [raw]})[0]


def load_rounds(path: str | Path, default_size: int | None = None) -> list[RoundSpec]:
    return parse_rounds(read_yaml(path, RoundsError, "rounds"), default_size)


def find_round(rounds: list[RoundSpec], round_id: str) -> RoundSpec:
    for spec in rounds:
        if spec.id == round_id:
            return spec
    raise RoundsError(f"round {round_id!r} is not in the rounds spec (ids: {[r.id for r in rounds]})")


def _ids(n: int) -> list[str]:
    width = max(2, len(str(n)))
    return [f"r{i + 1:0{width}d}" for i in range(n)]


def _entry(round_id: str, shift: list, mix: float = 1.0) -> dict:
    entry: dict[str, Any] = {"id": round_id, "shift": list(shift)}
    if shift and mix < 1.0:
        entry["mix"] = round(float(mix), 6)
    return entry


def static_mixture(n_rounds: int, shift: list, mix: float) -> dict:
    """Every round: the same fraction `mix` of the batch shifted."""
    return {"rounds": [_entry(i, shift, mix) for i in _ids(n_rounds)]}


def hard_switch(n_rounds: int, every: int, shift_a: list, shift_b: list) -> dict:
    """A for `every` rounds, then B, then A again...: tests a switch back to a known distribution."""
    if every < 1:
        raise RoundsError("every: must be >= 1")
    return {"rounds": [_entry(rid, shift_a if (i // every) % 2 == 0 else shift_b) for i, rid in enumerate(_ids(n_rounds))]}


def gradual_ramp(n_rounds: int, shift: list, start: int = 0) -> dict:
    """Clean until round `start`, then the shifted fraction grows linearly to 1 at the last round."""
    out = []
    for i, rid in enumerate(_ids(n_rounds)):
        mix = 0.0 if i < start else (i - start + 1) / max(1, n_rounds - start)
        out.append(_entry(rid, shift if mix > 0 else [], min(1.0, mix)))
    return {"rounds": out}


def random_mixture(n_rounds: int, shifts: list[list], seed: int) -> dict:
    """Each round a shift drawn from `shifts` (may include []) with a random fraction in [0.5, 1]."""
    rng = rng_for(seed, "random_mixture")
    out = []
    for rid in _ids(n_rounds):
        shift = shifts[int(rng.integers(len(shifts)))]
        out.append(_entry(rid, shift, float(rng.uniform(0.5, 1.0))))
    return {"rounds": out}
