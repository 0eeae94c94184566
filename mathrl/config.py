"""One source of truth for configuration.

`config.yaml` at the repository root holds every key with its default (the paper's values): shared keys at
the top level and one section per script (`sft:`, `grpo:`, ...). A script sees one flat dict: the shared keys
merged with its own section. Layers, later wins:

    config.yaml  ->  --config FILE (same layout, only the keys it changes)  ->  --KEY VALUE on the command line

Every value is type-checked against the default's type and an unknown key is rejected with its close matches,
so a typo (`--learnig_rate`) fails loudly instead of silently training with the default.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml

from mathrl.errors import UserError
from mathrl.prompts import SFT_TARGETS

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_PATH = REPO_ROOT / "config.yaml"
RESOLVED_CONFIG_NAME = "config.yaml"


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads yes/no/on/off as booleans, so `mixed_precision: no` would become False. Like YAML 1.2,
    only true/false are booleans here."""


_BOOL_TAG = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def read_yaml(path: str | Path) -> dict:
    """Parse a YAML mapping; errors name the file (and line, when YAML knows it)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{path}{where}: invalid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of keys to values, got {type(data).__name__}")
    return data


def _split_sections(data: dict) -> tuple[dict, dict[str, dict]]:
    shared = {k: v for k, v in data.items() if not isinstance(v, dict)}
    sections = {k: v for k, v in data.items() if isinstance(v, dict)}
    return shared, sections


def _unknown_key_error(key: str, valid: list[str], where: str) -> UserError:
    matches = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    hint = f"; did you mean: {', '.join(matches)}?" if matches else f"; valid keys: {', '.join(sorted(valid))}"
    return UserError(f'{where}: unknown config key "{key}"{hint}')


def coerce(key: str, value: Any, default: Any, where: str) -> Any:
    """Return `value` converted to the type of `default`, or raise a UserError naming `where` and `key`."""
    def fail(expected: str) -> UserError:
        return UserError(f'{where}: key "{key}" expects {expected}, got {value!r}')

    if default is None:  # optional keys (paths, limits): any scalar or null
        if isinstance(value, (dict, list)):
            raise fail("a single value or null")
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise fail("true or false")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise fail("an integer")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `5e-6` as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise fail("a number")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise fail("a string")
    raise fail(type(default).__name__)


# Values no run can use, refused when read (not when first used, minutes into a run): key -> (test, expected).
VALID_RANGES = {
    "learning_rate": (lambda v: v >= 0, ">= 0"),
    "adam_beta1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "adam_beta2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "eval_batch_size": (lambda v: v > 0, "> 0"),
    "kl_coeff": (lambda v: v >= 0, ">= 0"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "temperature": (lambda v: v > 0, "> 0"),
    "save_every": (lambda v: v >= 0, ">= 0 (0: never)"),
    "eval_every": (lambda v: v >= 0, ">= 0"),
    "warmup_steps": (lambda v: v >= 0, ">= 0"),
    "max_train_seconds": (lambda v: v >= 0, ">= 0 (0: no limit)"),
    "train_fraction": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "study_step_fraction": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "sft_target": (lambda v: v in SFT_TARGETS, f"one of {', '.join(SFT_TARGETS)}"),
}


def check_range(key: str, value: Any, where: str) -> Any:
    """`value`, or a UserError naming `where` when it lies outside the key's valid range."""
    rule = VALID_RANGES.get(key)
    if rule is not None and value is not None and not rule[0](value):
        raise UserError(f'{where}: key "{key}" must be {rule[1]}, got {value!r}')
    return value


def parse_overrides(tokens: list[str]) -> list[tuple[str, str]]:
    """Turn `--key value` / `--key=value` tokens into (key, raw text) pairs."""
    pairs, i = [], 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or token == "--":
            raise UserError(f"unexpected argument {token!r}: config overrides are written --KEY VALUE")
        if "=" in token:
            key, raw = token[2:].split("=", 1)
            i += 1
        else:
            key = token[2:]
            if i + 1 >= len(tokens):
                raise UserError(f"--{key}: missing value (write --{key} VALUE)")
            raw = tokens[i + 1]
            i += 2
        pairs.append((key, raw))
    return pairs


def parse_cli_value(raw: str, default: Any) -> Any:
    """Command-line text as a value for a key with this default: strings stay verbatim (`--output_dir 007`),
    optional keys read `null` as None, everything else is read as a YAML scalar and type-checked later."""
    if isinstance(default, str):
        return raw
    if default is None:
        return None if raw in ("null", "None", "~") else raw
    try:
        return yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError:
        return raw


def resolve_config(section: str, config_file: str | None = None, overrides: list[str] | tuple = ()) -> dict:
    """The flat config a script sees: defaults <- config_file <- command-line overrides."""
    defaults = read_yaml(DEFAULT_CONFIG_PATH)
    shared, sections = _split_sections(defaults)
    if section not in sections:
        raise ValueError(f"config.yaml has no section {section!r}")  # a programming error, not a user one
    resolved = {**shared, **sections[section]}
    valid = list(resolved)

    if config_file is not None:
        user = read_yaml(config_file)
        user_shared, user_sections = _split_sections(user)
        for name in user_sections:
            if name not in sections:
                raise _unknown_key_error(name, list(shared) + list(sections), str(config_file))
        layers = [(user_shared, str(config_file))]
        layers.append((user_sections.get(section, {}), f"{config_file} [{section}]"))
        for layer, where in layers:
            for key, value in layer.items():
                if key not in resolved:
                    raise _unknown_key_error(key, valid, where)
                resolved[key] = check_range(key, coerce(key, value, _default_of(key, shared, sections[section]),
                                                        where), where)
        # Keys of other sections are checked too, so a typo there is not silently ignored.
        for name, layer in user_sections.items():
            other_valid = {**shared, **sections[name]}
            for key in layer:
                if key not in other_valid:
                    raise _unknown_key_error(key, list(other_valid), f"{config_file} [{name}]")

    for key, raw in parse_overrides(list(overrides)):
        if key not in resolved:
            raise _unknown_key_error(key, valid, f"--{key}")
        default = _default_of(key, shared, sections[section])
        resolved[key] = check_range(key, coerce(key, parse_cli_value(raw, default), default, f"--{key}"), f"--{key}")
    return resolved


def _default_of(key: str, shared: dict, section: dict) -> Any:
    return section[key] if key in section else shared[key]


def require_positive(config: dict, *keys: str) -> None:
    """Reject a zero or negative value for keys that size the run (a 0 here means an empty run, not 'off')."""
    for key in keys:
        if config[key] <= 0:
            raise UserError(f'key "{key}" must be > 0, got {config[key]}')


def save_config(config: dict, directory: str | Path) -> Path:
    """Write the resolved config beside a checkpoint so the run can be reproduced exactly."""
    path = Path(directory) / RESOLVED_CONFIG_NAME
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return path


def load_saved_config(directory: str | Path) -> dict:
    """The resolved config saved in a checkpoint directory ({} if the directory has none, e.g. a hub model)."""
    path = Path(directory) / RESOLVED_CONFIG_NAME
    return read_yaml(path) if path.is_file() else {}


def for_checkpoint(config: dict, ckpt: str) -> dict:
    """The config, with the prompt_format this checkpoint was trained with (from its saved config.yaml).

    Prompting a model in another format than it was trained in is a silent train/eval mismatch, so the
    checkpoint's own format always wins; a hub model or the untrained built-in one keeps the config's.
    """
    saved = load_saved_config(ckpt) if Path(ckpt).is_dir() else {}
    return {**config, "prompt_format": saved.get("prompt_format", config["prompt_format"])}


def parse_args(section: str, parser, argv: list[str] | None = None):
    """Parse a script's own flags with `parser`, and every other `--KEY VALUE` as a config override.

    Returns (args, config). Overrides are split off before argparse sees them, so a value such as
    `--temperature 0.5` is never mistaken for a positional argument.
    """
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="YAML file whose keys replace config.yaml's defaults")
    own = {opt for action in parser._actions for opt in action.option_strings}
    script_tokens, override_tokens, i = [], [], 0
    while i < len(argv):
        token = argv[i]
        name = token.split("=", 1)[0]
        if token.startswith("--") and token != "--" and name not in own:
            step = 1 if "=" in token or i + 1 >= len(argv) else 2
            override_tokens += argv[i:i + step]
            i += step
        else:
            script_tokens.append(token)
            i += 1
    args = parser.parse_args(script_tokens)
    config = resolve_config(section, args.config, override_tokens)
    return args, config
