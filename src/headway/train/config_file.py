"""Config files for `headway train --config FILE` (TOML, YAML or JSON) and `--print-config`.

A file holds `TrainConfig` fields by name (flag names with dashes are accepted too), in their
section's table — `[model]`, `[data]`, `[optim]`, `[eval]`, `[run]` (`headway.train.config.SECTIONS`;
in YAML and JSON, mappings of those names) — or flat, or under a `[train]` table (flat or with the
section tables inside it: `[train.model]`). Every field name is unique, so the sections only
organise the file: a key under the wrong section is an error naming the right one.

Precedence: defaults < the file < flags given on the command line. An unknown key is an error
naming it and the nearest valid key; a value of the wrong type, or outside the field's choices, is
an error naming the key; "none" unsets an optional value. `--print-config` writes the complete
resolved config as sectioned TOML, a file `--config` reads back to the same config.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any

from headway.train.config import SECTION_HELP, SECTIONS, TrainConfig

FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def _parse(path: Path) -> dict[str, Any]:
    """The file's top-level mapping, syntax checked."""
    if not path.is_file():
        raise ValueError(f"--config: {path} is not a file")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ValueError(f"--config: {path} must end in .toml, .yaml, .yml or .json")
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError("--config: reading YAML needs PyYAML (`pip install pyyaml`)") from None
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            raw = tomllib.loads(text)
        elif suffix == ".json":
            raw = json.loads(text)
        else:
            raw = yaml.safe_load(text) or {}
    except Exception as e:  # noqa: BLE001 - tomllib / yaml / json syntax errors, with their line numbers
        raise ValueError(f"--config: {path} is not valid {suffix[1:].upper()}: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"--config: {path} must hold a table of settings, got {type(raw).__name__}")
    return raw


def _check_type(key: str, value: Any, path: Path) -> Any:
    """`value` as field `key`'s type (an int is a float where a float is expected), or a ValueError
    naming the key, the type and the value; a value outside the field's choices is refused too."""
    hint = _HINTS[key]
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    if (value is None or value == "none") and type(None) in args:
        return None
    for t in args:
        origin = typing.get_origin(t) or t
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if origin is list and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        if origin is list and isinstance(value, str):
            return [value]
        if origin in (int, str, bool) and type(value) is origin:
            choices = FIELDS[key].metadata["choices"]
            if choices is not None and value not in choices:
                raise ValueError(f"--config {path}: `{key}` must be one of {' | '.join(choices)}, got {value!r}")
            return value
    names = " or ".join(getattr(t, "__name__", str(t)) for t in args)
    raise ValueError(f"--config {path}: `{key}` must be {names}, got {value!r}")


def _unknown(key: str, path: Path) -> ValueError:
    """The error for a key that is neither a field nor a section, with the nearest valid name."""
    near = difflib.get_close_matches(key, [*FIELDS, *SECTIONS], n=1)
    hint = f"; did you mean `{near[0]}`?" if near else ""
    return ValueError(f"--config {path}: unknown key `{key}`{hint} (valid keys: `headway train --help`; sections: "
                      f"{', '.join(f'[{s}]' for s in SECTIONS)})")


def _collect(table: dict[str, Any], where: str | None, path: Path, out: dict[str, Any], top: bool) -> None:
    """Add the settings of `table` to `out`: its section tables (and, at the top, a `[train]`
    table) recursively, its fields checked against `where`, the section it sits in (None: flat)."""
    for k, v in table.items():
        key = str(k).replace("-", "_")
        if isinstance(v, dict) and key in SECTIONS and where is None:
            _collect(v, key, path, out, top=False)
            continue
        if isinstance(v, dict) and key == "train" and top:
            _collect(v, None, path, out, top=False)
            continue
        if isinstance(v, dict):  # no field holds a table: a misspelt or misplaced section
            if where is not None:
                raise ValueError(f"--config {path}: section `[{k}]` inside `[{where}]`; sections are not nested")
            near = difflib.get_close_matches(key, SECTIONS, n=1)
            hint = f"; did you mean `[{near[0]}]`?" if near else ""
            raise ValueError(f"--config {path}: unknown section `[{k}]`{hint} (sections: "
                             f"{', '.join(f'[{s}]' for s in SECTIONS)}, or flat keys)")
        if key not in FIELDS:
            raise _unknown(str(k), path)
        section = FIELDS[key].metadata["section"]
        if where is not None and section != where:
            raise ValueError(f"--config {path}: `{k}` belongs in [{section}], not in [{where}]")
        if key in out:
            raise ValueError(f"--config {path}: `{key}` is given twice")
        out[key] = _check_type(key, v, path)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """{field: value} from a TOML / YAML / JSON file, every key, section and type checked."""
    p = Path(path)
    out: dict[str, Any] = {}
    _collect(_parse(p), None, p, out, top=True)
    return out


def to_toml(cfg: TrainConfig) -> str:
    """The complete config as TOML, one table per section; an unset optional value is a comment
    when that is its default, else the string "none" (TOML has no null)."""
    lines = ["# headway train --config FILE; flags given on the command line win"]
    for section in SECTIONS:
        lines += ["", f"[{section}]  # {SECTION_HELP[section]}"]
        for name, value in cfg.section(section).items():
            if value is None:
                lines.append(f"# {name} = (none)" if FIELDS[name].default is None else f'{name} = "none"')
            else:
                lines.append(f"{name} = {json.dumps(value)}")  # JSON literals of str, number, bool, list are TOML
    return "\n".join(lines) + "\n"
