"""The explicit per-round scenario (what config/rounds.yaml holds), its validation, and schedules.

A round is `{id: r03, shift: [...], mix: 1.0, size: 200, seed: 0}`: `mix` is the fraction of
the batch that is shifted (the rest is clean), `size` and `seed` are optional overrides.
Schedule generators return such explicit round lists, so what runs is always written down.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from .seeding import rng_for
from .shifts import Shift, ShiftError, parse_shift_list, shift_tag
from .yamlfile import read_yaml

ROUND_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class RoundsError(ValueError):
    """The rounds spec is wrong; the message names the field."""


@dataclass(frozen=True)
class RoundSpec:
    id: str
    shifts: tuple[Shift, ...] = ()
    mix: float = 1.0
    size: int | None = None
    seed: int | None = None

    @property
    def tag(self) -> str:
        tag = shift_tag(self.shifts)
        return tag if self.mix >= 1.0 or not self.shifts else f"{tag}@{self.mix:g}"


def parse_round(raw: Any, where: str) -> RoundSpec:
    if not isinstance(raw, dict):
        raise RoundsError(f"{where}: must be a mapping with id and shift, got {raw!r}")
    unknown = sorted(set(raw) - {"id", "shift", "mix", "size", "seed"})
    if unknown:
        raise RoundsError(f"{where}: unknown key(s) {unknown}; known: id, shift, mix, size, seed")
    round_id = raw.get("id")
    if not isinstance(round_id, str) or not ROUND_ID.match(round_id):
        raise RoundsError(f"{where}.id: must be a string of letters, digits, '_', '-', '.', got {round_id!r}")
    try:
        shifts = parse_shift_list(raw.get("shift", []), where=f"{where}.shift")
    except ShiftError as exc:
        raise RoundsError(str(exc)) from exc
    mix = raw.get("mix", 1.0)
    if isinstance(mix, bool) or not isinstance(mix, (int, float)) or not 0.0 <= mix <= 1.0:
        raise RoundsError(f"{where}.mix: must be a number in [0, 1], got {mix!r}")
    size = raw.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise RoundsError(f"{where}.size: must be a positive integer, got {size!r}")
    seed = raw.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RoundsError(f"{where}.seed: must be an integer, got {seed!r}")
    return RoundSpec(round_id, shifts, float(mix), size, seed)


def parse_rounds(raw: Any) -> list[RoundSpec]:
    """Validate a parsed rounds document `{rounds: [...]}`; ids must be unique."""
    if not isinstance(raw, dict) or not isinstance(raw.get("rounds"), list) or not raw["rounds"]:
        raise RoundsError("rounds: the file must hold a non-empty list under the key 'rounds'")
    rounds = [parse_round(item, f"rounds[{i}]") for i, item in enumerate(raw["rounds"])]
    seen: dict[str, int] = {}
    for i, spec in enumerate(rounds):
        if spec.id in seen:
            raise RoundsError(f"rounds[{i}].id: duplicate id {spec.id!r} (first at rounds[{seen[spec.id]}])")
        seen[spec.id] = i
    return rounds


def load_rounds(path: str | Path) -> list[RoundSpec]:
    return parse_rounds(read_yaml(path, RoundsError, "rounds"))


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
