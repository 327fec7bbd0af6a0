"""Recipe fields set by name: `train --set FIELD=VALUE` and `train --config FILE.toml`.

Every field of EncoderConfig, TrainConfig and Runtime can be set this way, so `train --help` shows the few
options people change and the research knobs stay one `--set` away, checked against the dataclasses as
timm's `--config` and pip-tools' config files are: a misspelt field is one line naming the closest one.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import typing
from pathlib import Path
from typing import Any

from ..core.config import AUGMENT_PRESETS, EncoderConfig, Runtime, TrainConfig, parse_scales, parse_unfreeze
from ..core.errors import UsageError

CONFIGS = (EncoderConfig, TrainConfig, Runtime)  # what a setting may name a field of
TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
# augmentation presets under the names they had while they shared them with recipes: accepted for one release
AUGMENT_ALIASES = {"faces": "portraits", "photos": "photo-edits", "copies": "copy-edits"}


def fields() -> dict[str, Any]:
    """Every settable field's name → its declared type, across CONFIGS."""
    return {name: hint for cls in CONFIGS for name, hint in typing.get_type_hints(cls).items()
            if name in {f.name for f in dataclasses.fields(cls)}}


def _closest(name: str, known: dict[str, Any]) -> str:
    """The one-line refusal of an unknown field, naming the nearest known one."""
    near = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    return f"unknown recipe field {name!r}" + (f"; did you mean {near[0]!r}?" if near else
                                                 "; `train DIR --recipe NAME --show` lists them")


def value_of(name: str, raw: Any) -> Any:
    """raw (text from --set, or a TOML value) as field `name` holds it.

    Raises:
        UsageError: no such field, or a value it cannot take.
    """
    known = fields()
    if name not in known:
        raise UsageError(_closest(name, known))
    try:
        return _convert(name, known[name], raw)
    except UsageError:
        raise
    except (ValueError, TypeError):
        raise UsageError(f"{name} cannot be {raw!r} (a {_shown_type(known[name])})") from None


def _convert(name: str, hint: Any, raw: Any) -> Any:
    """The value of one field from text or a TOML value, by its declared type."""
    if name == "augment":
        preset = AUGMENT_ALIASES.get(raw, raw)
        if preset not in AUGMENT_PRESETS:
            raise UsageError(f"augment must be one of {', '.join(AUGMENT_PRESETS)}, got {raw!r}")
        return AUGMENT_PRESETS[preset]
    if name == "unfreeze":
        return parse_unfreeze(raw.split() if isinstance(raw, str) else list(raw))
    if name == "test_scales":
        return parse_scales(raw) if isinstance(raw, str) else tuple(float(x) for x in raw)
    kinds = [k for k in typing.get_args(hint) if k is not type(None)] or [hint]
    kind = kinds[0]
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() not in TRUE + FALSE:
            raise ValueError(raw)
        return str(raw).lower() in TRUE
    if isinstance(raw, bool) or kind not in (int, float, str):
        raise TypeError(raw)
    if kind is int and isinstance(raw, float):
        raise TypeError(raw)
    return kind(raw)


def _shown_type(hint: Any) -> str:
    """A field's type as a person reads it."""
    return " or ".join(getattr(k, "__name__", str(k)) for k in typing.get_args(hint) or [hint])


def parse_sets(items: list[str]) -> dict[str, Any]:
    """`--set FIELD=VALUE` items as field → value, later items winning.

    Raises:
        UsageError: an item without '=', an unknown field or a bad value.
    """
    out = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--set expects FIELD=VALUE, e.g. --set koleo=20, got {item!r}")
        out[name.strip().replace("-", "_")] = value_of(name.strip().replace("-", "_"), raw.strip())
    return out


def read_config(path: Path) -> dict[str, Any]:
    """A TOML file of `field = value` lines (top level) as field → value.

    Raises:
        UsageError: not readable, not TOML, or a field or value a setting would refuse.
    """
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"no such config file: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path} is not a readable TOML file ({exc})") from None
    return {name: value_of(name, raw) for name, raw in data.items()}


def recipe_fields(encoder: EncoderConfig, train: TrainConfig) -> dict[str, Any]:
    """Every field of a recipe with its value (the augmentation by its preset's name): what --show prints."""
    out = {f.name: getattr(encoder, f.name) for f in dataclasses.fields(encoder)}
    for f in dataclasses.fields(train):
        value = getattr(train, f.name)
        out[f.name] = next((n for n, preset in AUGMENT_PRESETS.items() if preset == value), "custom") \
            if f.name == "augment" else value
    return out
