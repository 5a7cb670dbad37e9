"""Finding and reading the config file, in exactly the original server's search order."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import orjson

CONFIG_BASENAME = "chatgpt-apiserver"
EXTENSIONS = (".json", ".yaml", ".yml")
DEFAULT_SEARCH_DIRS = (".", "config", ".config", "/etc/chatgpt-apiserver")


class ConfigError(Exception):
    """Every problem found in the configuration, each naming its key, flag or env var."""

    def __init__(self, problems: list[str], hint: str = "") -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.hint = hint

    def __str__(self) -> str:
        lines = ["configuration error" + ("s" if len(self.problems) > 1 else "") + ":"]
        lines += [f"  - {problem}" for problem in self.problems]
        if self.hint:
            lines.append(self.hint)
        return "\n".join(lines)


@dataclass
class Location:
    """Where the config file was found (or not), and how."""

    path: Optional[Path]
    how: str
    searched: list[str] = field(default_factory=list)


def locate(flag_file: Optional[str], flag_path: Optional[str], env: Mapping[str, str]) -> Location:
    """Find the config file: an explicit file first, then a search of the config path and default dirs."""
    explicit = [
        (flag_file, "--config_file"),
        (env.get("CHATGPT_APISERVER_CONFIG_FILE"), "CHATGPT_APISERVER_CONFIG_FILE"),
        (env.get("CONFIG_FILE"), "CONFIG_FILE"),
    ]
    for value, source in explicit:
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise ConfigError([f"{source}: config file {value!r} does not exist or is not a file"])
            return Location(path, source, [str(path)])

    dirs: list[tuple[str, str]] = []
    for value, source in (
        (flag_path, "--config_path"),
        (env.get("CHATGPT_APISERVER_CONFIG_PATH"), "CHATGPT_APISERVER_CONFIG_PATH"),
        (env.get("CONFIG_PATH"), "CONFIG_PATH"),
    ):
        if value:
            dirs.append((value, source))
            break
    dirs += [(d, "default search path") for d in DEFAULT_SEARCH_DIRS]

    searched: list[str] = []
    for directory, source in dirs:
        for ext in EXTENSIONS:
            candidate = Path(directory).expanduser() / (CONFIG_BASENAME + ext)
            searched.append(str(candidate))
            if candidate.is_file():
                return Location(candidate, f"found in {directory} ({source})", searched)
    return Location(None, "not found", searched)


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|`[^`]*`")


def load(path: Path) -> dict[str, Any]:
    """Read a JSON or YAML config document; the top level must be an object."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            document = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError([f"{path}: not valid YAML{_where(exc)}"]) from None
    else:
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ConfigError([f"{path}: not valid JSON: {exc}"]) from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError([f"{path}: the top level must be an object, got {type(document).__name__}"])
    return document


def _where(error: Any) -> str:
    """Where a YAML error is and what it is, without the text around it: that line may hold a key, and the
    problem's own words may quote it (a tag or an alias, which a value such as `!key` or `*key` becomes), so
    what they quote is left out."""
    mark = getattr(error, "problem_mark", None)
    place = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    if mark is None and isinstance(getattr(error, "position", None), int):
        place = f" at character {error.position + 1}"  # (a character YAML does not allow)
    words = [getattr(error, name, None) for name in ("context", "problem", "reason")]
    what = _QUOTED.sub("…", " ".join(word for word in words if isinstance(word, str) and word))
    return f"{place}: {what}" if what else place


def resolve(relative_to: Path, value: str) -> Path:
    """A path named inside a config file, resolved against that file's directory."""
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else (relative_to.parent / path)
