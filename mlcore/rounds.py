"""The explicit per-round scenario (what config/rounds.yaml holds), its validation, and schedules.

A round is `{id: r03, shift: [...], mix: 1.0, size: 200, seed: 0}`: `mix` is the fraction of
the batch that is shifted (the rest is clean), `size` and `seed` are optional overrides.
Schedule generators return such explicit round lists, so what runs is always written down.

A scenario has one edge (`{rounds: [...]}`, edge id `edge`) or a fleet (`{edges: [a, b],
rounds: [...]}`): every edge follows the one timeline, except where a round says otherwise
for it (`per_edge: {b: {shift: [...], mix: 0.5}}`) or runs on some edges only (`only: [a]`).
`parse_fleet` expands it into each edge's own list of rounds (`expand_fleet` on the raw
entries; the workflow's common.smk does the same without this package).

A round's `offset` (where its batch starts in its edge's stream order, mlcore/stream.py) is
never written by hand: it is the sum of that edge's earlier rounds' sizes, so the rounds of an
edge take disjoint rows. `parse_rounds(raw, default_size)` assigns it in file order; the
workflow, which runs each round from a one-round document, computes it the same way and
carries it next to the entry with the edge: `{rounds: [entry], offset: N, edge: a}`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .seeding import rng_for
from .shifts import Shift, ShiftError, parse_shift_list, shift_tag
from .yamlfile import check_schema, read_yaml


#: The edge of a one-edge scenario (`{rounds: [...]}`): it walks the seed's own stream order.
DEFAULT_EDGE = "edge"
#: The keys of a fleet entry that say which edges see what; an expanded entry has neither.
FLEET_KEYS = ("only", "per_edge")


#: The edge-id pattern of workflow/schemas/rounds.schema.yaml ($defs.edge_id), for the workflow's documents.
EDGE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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
    edge: str | None = None  # whose stream order (mlcore/stream.py); None = DEFAULT_EDGE's

    @property
    def tag(self) -> str:
        tag = shift_tag(self.shifts)
        return tag if self.mix >= 1.0 or not self.shifts else f"{tag}@{self.mix:g}"


def _spec(raw: dict) -> RoundSpec:
    """A round from an entry that passed the schema (shift steps built by mlcore.shifts)."""
    size, seed = raw.get("size"), raw.get("seed")
    return RoundSpec(raw["id"], parse_shift_list(raw.get("shift", [])), float(raw.get("mix", 1.0)), size, seed)


def _document_offset(raw: Any) -> tuple[Any, int | None, str | None]:
    """Split the workflow's `offset` and `edge` off a one-round document: they are not part of
    rounds.yaml (whose schema refuses them), so they are checked here, and only next to exactly
    one round."""
    if not isinstance(raw, dict) or not ("offset" in raw or "edge" in raw):
        return raw, None, None
    rest = {key: value for key, value in raw.items() if key not in ("offset", "edge")}
    offset, edge = raw.get("offset", 0), raw.get("edge")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise RoundsError(f"offset: must be an integer >= 0, got {offset!r}")
    if edge is not None and not (isinstance(edge, str) and EDGE_ID.match(edge)):
        raise RoundsError(f"edge: must be an edge id ({EDGE_ID.pattern}), got {edge!r}")
    if not isinstance(rest.get("rounds"), list) or len(rest["rounds"]) != 1 or "edges" in rest:
        raise RoundsError("offset, edge: only a one-round document (written by the workflow) carries them")
    return rest, offset, edge


def assign_offsets(specs: list[RoundSpec], default_size: int) -> list[RoundSpec]:
    """Each round's start in the stream order: the sizes of the rounds before it, in file order.

    Depends on the earlier rounds' sizes only, so editing a round's shift moves no one.
    """
    out, offset = [], 0
    for spec in specs:
        out.append(replace(spec, offset=offset))
        offset += spec.size or default_size
    return out


def _check_ids(raw: dict) -> None:
    """The rules of a rounds document a schema cannot state: unique round ids; `only` and
    `per_edge` in the fleet form only, naming its edges; every edge has at least one round."""
    seen: dict[str, int] = {}
    for i, entry in enumerate(raw["rounds"]):
        if entry["id"] in seen:
            raise RoundsError(f"rounds[{i}].id: duplicate id {entry['id']!r} (first at rounds[{seen[entry['id']]}])")
        seen[entry["id"]] = i
    edges = raw.get("edges")
    for i, entry in enumerate(raw["rounds"]):
        for key in FLEET_KEYS:
            if key in entry and edges is None:
                raise RoundsError(f"rounds[{i}].{key}: only a fleet names edges (add a top-level `edges: [...]`)")
            unknown = [edge for edge in entry.get(key, ()) if edge not in edges]
            if unknown:
                raise RoundsError(f"rounds[{i}].{key}: unknown edge {unknown[0]!r} (edges: {edges})")
        excluded = [edge for edge in entry.get("per_edge", {}) if "only" in entry and edge not in entry["only"]]
        if excluded:
            raise RoundsError(f"rounds[{i}].per_edge: edge {excluded[0]!r} is not in this round's `only` {entry['only']}")
    for edge in edges or ():
        if not any(edge in entry.get("only", (edge,)) for entry in raw["rounds"]):
            raise RoundsError(f"edges: edge {edge!r} has no round (every round's `only` leaves it out)")


def expand_fleet(raw: dict) -> dict[str, list[dict]]:
    """{edge id: its rounds as plain one-edge entries}, from a document that passed the schema
    and `_check_ids`: each round the edge takes part in (`only`), with its `per_edge` override
    of `shift`, `mix` or `size` laid over the round's own. The one-edge form is {"edge": rounds}."""
    out: dict[str, list[dict]] = {}
    for edge in raw.get("edges", [DEFAULT_EDGE]):
        out[edge] = []
        for entry in raw["rounds"]:
            if edge not in entry.get("only", (edge,)):
                continue
            resolved = {key: value for key, value in entry.items() if key not in FLEET_KEYS}
            resolved.update(entry.get("per_edge", {}).get(edge, {}))
            out[edge].append(resolved)
    return out


def _specs(entries: list[dict]) -> list[RoundSpec]:
    try:
        return [_spec(entry) for entry in entries]
    except ShiftError as exc:  # a rule of mlcore.shifts beyond the schema (e.g. weights all zero)
        raise RoundsError(str(exc)) from exc


def parse_fleet(raw: Any, default_size: int | None = None) -> dict[str, list[RoundSpec]]:
    """Validate a rounds document of either form; return {edge id: its rounds}, each carrying
    its edge, and, with `default_size`, its offset in that edge's stream order (`assign_offsets`)."""
    check_schema(raw, "rounds.schema.yaml", RoundsError)
    _check_ids(raw)
    out = {}
    for edge, entries in expand_fleet(raw).items():
        specs = [replace(spec, edge=edge) for spec in _specs(entries)]
        out[edge] = specs if default_size is None else assign_offsets(specs, default_size)
    return out


def parse_rounds(raw: Any, default_size: int | None = None) -> list[RoundSpec]:
    """Validate a one-edge rounds document `{rounds: [...]}` against workflow/schemas/rounds.schema.yaml
    (the one validator of rounds.yaml); then the rule a schema cannot state: ids are unique.

    With `default_size` (the edge's batch size) every round gets its offset (`assign_offsets`);
    a workflow document's own `offset` and `edge` are kept as written. A fleet: `parse_fleet`.
    """
    raw, offset, edge = _document_offset(raw)
    check_schema(raw, "rounds.schema.yaml", RoundsError)
    if "edges" in raw:
        raise RoundsError("edges: a fleet has one list of rounds per edge (mlcore.rounds.parse_fleet)")
    _check_ids(raw)
    specs = _specs(raw["rounds"])
    if offset is not None:
        return [replace(specs[0], offset=offset, edge=edge)]
    return specs if default_size is None else assign_offsets(specs, default_size)


def parse_round(raw: Any) -> RoundSpec:
    """One round entry (tests, benchmarks), checked by the same schema as a whole rounds file."""
    return parse_rounds({"rounds": [raw]})[0]


def load_rounds(path: str | Path, default_size: int | None = None) -> list[RoundSpec]:
    return parse_rounds(read_yaml(path, RoundsError, "rounds"), default_size)


def load_fleet(path: str | Path, default_size: int | None = None) -> dict[str, list[RoundSpec]]:
    return parse_fleet(read_yaml(path, RoundsError, "rounds"), default_size)


def load_edge_rounds(path: str | Path, edge_id: str, default_size: int | None = None) -> list[RoundSpec]:
    """The rounds of edge `edge_id` in a rounds file of either form, or in a workflow's one-round
    document (whose `edge`, if written, must be `edge_id`); every round carries `edge_id`."""
    raw = read_yaml(path, RoundsError, "rounds")
    if isinstance(raw, dict) and "edges" in raw:
        fleet = parse_fleet(raw, default_size)
        if edge_id not in fleet:
            raise RoundsError(f"edge {edge_id!r} is not in the rounds file (edges: {list(fleet)})")
        return fleet[edge_id]
    specs = parse_rounds(raw, default_size)
    for spec in specs:
        if spec.edge not in (None, edge_id):
            raise RoundsError(f"edge: the document is edge {spec.edge!r}'s, not {edge_id!r}'s")
    return [replace(spec, edge=edge_id) for spec in specs]


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
