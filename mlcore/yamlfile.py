"""Reading a YAML file with one clear error, and checking a parsed input file against its schema.

The JSON schemas in workflow/schemas are the only validators of config.yaml and rounds.yaml:
Snakemake applies them when it parses the workflow, and `check_schema` applies the same
files here (for the command lines run by hand, tests and benchmarks), with messages that
name the field (`edge.query_size: 0 is less than the minimum of 1`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

#: The schema files (this project is installed in place: `pip install -e .`).
SCHEMAS = Path(__file__).resolve().parents[1] / "workflow" / "schemas"


def read_yaml(path: str | Path, error: type[Exception], what: str) -> Any:
    """Parsed content of `path`; raises `error` naming `what` and the file on failure."""
    file = Path(path)
    if not file.is_file():
        raise error(f"{what} file not found: {file}")
    try:
        return yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise error(f"{file}: not valid YAML: {exc}") from exc


@functools.lru_cache(maxsize=None)
def _registry():
    """Every schema file under its file URI, so that `$ref: shift.schema.yaml` is read once."""
    from referencing import Registry, Resource

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return Registry().with_resources(
        (file.as_uri(), Resource.from_contents(yaml.load(file.read_text(encoding="utf-8"), Loader=loader)))
        for file in sorted(SCHEMAS.glob("*.schema.yaml")))


@functools.lru_cache(maxsize=None)
def _validator(name: str, open_top: bool):
    from jsonschema import Draft202012Validator

    schema = dict(_registry().contents((SCHEMAS / name).as_uri()))
    schema["$id"] = (SCHEMAS / name).as_uri()
    if open_top:  # keys of other owners allowed, missing sections take their defaults
        schema.pop("required", None)
        schema["additionalProperties"] = True
    return Draft202012Validator(schema, registry=_registry())


def prepare() -> None:
    """Build the validators now (the warm starter does, so that its forked jobs need not)."""
    _validator("config.schema.yaml", True)
    _validator("rounds.schema.yaml", False)


def _where(path) -> str:
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


def check_schema(raw: Any, name: str, error: type[Exception], *, open_top: bool = False) -> None:
    """Raise `error` naming the field if `raw` does not satisfy workflow/schemas/<name>.

    `open_top`: ignore the schema's top-level `required` and `additionalProperties`.
    """
    from jsonschema.exceptions import best_match

    found = best_match(_validator(name, open_top).iter_errors(raw))
    if found is None:
        return
    where = _where(found.absolute_path) or name.split(".")[0]
    if found.validator == "additionalProperties" and isinstance(found.instance, dict):
        known = set(found.schema.get("properties", {}))
        raise error(f"{where}: unknown key(s) {sorted(set(found.instance) - known)}; known: {sorted(known)}")
    if found.validator == "required" and isinstance(found.instance, dict):
        missing = [key for key in found.validator_value if key not in found.instance]
        prefix = f"{_where(found.absolute_path)}." if found.absolute_path else ""
        raise error(f"{prefix}{missing[0]}: required")
    if found.validator == "minItems" and found.validator_value == 1:
        raise error(f"{where}: must be a non-empty list")
    raise error(f"{where}: {found.message}")
