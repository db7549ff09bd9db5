"""Config files for `headway train --config FILE` (TOML or YAML) and `--print-config`.

A file holds `TrainConfig` fields by name (flag names with dashes are accepted too), flat or under
a `[train]` table. Precedence: defaults < the file < flags given on the command line. An unknown
key is an error naming it and the nearest valid key; a value of the wrong type is an error
naming the key; "none" unsets an optional value. `--print-config` writes the complete resolved
config as TOML, a file `--config` reads back to the same run.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any

from headway.train.config import TrainConfig

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def _parse(path: Path) -> dict[str, Any]:
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
    if set(raw) == {"train"} and isinstance(raw["train"], dict):
        raw = raw["train"]
    return raw


def _check_type(key: str, value: Any, path: Path) -> Any:
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
            return value
    names = " or ".join(getattr(t, "__name__", str(t)) for t in args)
    raise ValueError(f"--config {path}: `{key}` must be {names}, got {value!r}")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """{field: value} from a TOML / YAML / JSON file, every key and type checked."""
    p = Path(path)
    out: dict[str, Any] = {}
    for k, v in _parse(p).items():
        key = str(k).replace("-", "_")
        if key not in FIELDS:
            near = difflib.get_close_matches(key, list(FIELDS), n=1)
            hint = f"; did you mean `{near[0]}`?" if near else ""
            raise ValueError(f"--config {p}: unknown key `{k}`{hint} (valid keys: `headway train --help`)")
        out[key] = _check_type(key, v, p)
    return out


def to_toml(cfg: TrainConfig) -> str:
    """The complete config as TOML; an unset optional value is a comment when that is its default,
    else the string "none" (TOML has no null)."""
    lines = ["# headway train --config FILE; flags given on the command line win", "[train]"]
    for name, value in dataclasses.asdict(cfg).items():
        if value is None:
            lines.append(f"# {name} = (none)" if FIELDS[name].default is None else f'{name} = "none"')
        else:
            lines.append(f"{name} = {json.dumps(value)}")  # JSON literals of str, number, bool, list are TOML
    return "\n".join(lines) + "\n"
