"""Reading ``[live-data]`` INI files and turning their flat dotted keys into typed values.

The file format is the one fleets already deploy (baseplate-style): a single
``[live-data]`` section whose keys are dotted paths such as ``zookeeper.hosts``
or ``nodes.a.dest``.  A *spec* is a plain nested dict that mirrors those paths
and maps each leaf to a parser; :func:`parse_config` walks the spec, so every
program states its configuration declaratively in one place and every error
names the file and the exact key.

This module is deliberately stdlib-only: it must be importable by tools that
never talk to ZooKeeper.
"""
from __future__ import annotations

import configparser
import difflib
import grp
import importlib
import os
import pwd
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

SECTION = "live-data"

T = TypeVar("T")


class ConfigError(Exception):
    """A configuration problem a user can fix: it names the file, the key and what is wrong."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{source}: {key}" if key else source
        # A key refused for its control characters is named with them escaped: printed raw, an escape
        # sequence would drive the operator's terminal and a line separator would split the one line.
        super().__init__(_CONTROL.sub(_escaped, f"{where}: {problem}"))


def _escaped(match: re.Match[str]) -> str:
    char = ord(match.group())
    return f"\\x{char:02x}" if char < 0x100 else f"\\u{char:04x}"


class RawConfig(dict[str, str]):
    """The flat ``key -> value`` strings of one section, remembering which file they came from."""

    def __init__(self, values: Mapping[str, str], source: str = "<config>") -> None:
        super().__init__(values)
        self.source = source


def source_of(config: Mapping[str, str]) -> str:
    """Name the origin of a config for error messages; plain dicts from applications have none."""
    return getattr(config, "source", "<config>")


# --- reading the file -----------------------------------------------------------------------------

_ENV_REFERENCE = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*)|(?P<dollar>\$))"
)


def expand_environment(option: str, value: str) -> str:
    """``$VAR`` and ``${VAR}`` from the environment; ``$$`` is a literal dollar.

    ``%`` is left alone (unlike configparser's default interpolation), because values such as passwords or
    URL-encoded paths contain it.  An unset variable is an error rather than an empty string: silently
    mirroring a node into ``/`` because ``$DATA_DIR`` was unset is exactly the kind of surprise a config
    must not hold.
    """
    if "$" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group("dollar"):
            return "$"
        name = match.group("braced") or match.group("named")
        if name not in os.environ:
            raise _UnsetVariable(option, name)
        return os.environ[name]

    return _ENV_REFERENCE.sub(substitute, value)


class _UnsetVariable(Exception):
    def __init__(self, option: str, name: str) -> None:
        self.option = option
        self.name = name


COMMENT_PREFIXES = (";", "#")


def read_config(path: str, section: str = SECTION, expand: Sequence[str] | None = None) -> RawConfig:
    """Read one section of an INI file, keys exactly as written, environment references expanded.

    Every way the file can be unusable (missing, unreadable, not UTF-8, not
    INI, no such section, a duplicate key, an unset variable) becomes one
    :class:`ConfigError`.

    ``;`` and ``#`` start a comment at the start of a line, and after
    whitespace within a line (``mode = 0400 ; optional``), as operators
    expect from INI files: a value never silently carries its comment.

    ``expand`` limits ``$VAR`` expansion to keys starting with one of these
    prefixes; other keys keep their text as written.  A program that uses
    only some keys (the writer: ``zookeeper.*``, ``secrets.*``, ``writer.*``)
    must not fail on a variable only another program's keys refer to.
    """
    parser = configparser.ConfigParser(
        interpolation=None,  # expand_environment, below: one pass over the values, not one get() per key
        strict=True,
        comment_prefixes=COMMENT_PREFIXES,
        inline_comment_prefixes=COMMENT_PREFIXES,
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte order mark, as some Windows editors write, is no text
            text = f.read()
        parser.read_string(text, source=path)
    except OSError as e:
        raise ConfigError(path, "", f"cannot read config file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(path, "", f"not a UTF-8 text file (byte {e.start})") from None
    except configparser.DuplicateOptionError as e:
        raise ConfigError(path, e.option, f"key appears twice (line {e.lineno})") from None
    except configparser.DuplicateSectionError as e:
        raise ConfigError(path, f"[{e.section}]", f"section appears twice (line {e.lineno})") from None
    except configparser.MissingSectionHeaderError as e:
        raise ConfigError(path, "", f"line {e.lineno}: expected a [{section}] section header first") from None
    except configparser.ParsingError as e:
        line = e.errors[0][0] if e.errors else "?"
        raise ConfigError(path, "", f"line {line}: not a 'key = value' line") from None
    except configparser.Error as e:
        raise ConfigError(path, "", f"not a valid INI file: {e.message}") from None
    if not parser.has_section(section):
        raise ConfigError(path, f"[{section}]", "section is missing")
    expanded = None if expand is None else tuple(expand)
    # One search of the whole text spares one per key and value in the usual file, which has none.
    suspect = _CONTROL.search(text.replace("\n", " ")) is not None
    # A [DEFAULT] key the section overrides is hidden from items(), and so would be the lines joined to it.
    for key, value in parser.defaults().items():
        _refuse_continuation(parser, text, path, parser.default_section, key, value)
    values: dict[str, str] = {}
    for key, value in parser.items(section):
        _refuse_continuation(parser, text, path, section, key, value)
        raw = value
        try:
            if expanded is None or key.startswith(expanded):
                value = expand_environment(key, value)
        except _UnsetVariable as e:
            raise ConfigError(path, e.option, _unset_variable_problem(e.option, e.name)) from None
        problem = (suspect or value is not raw) and (control_character_problem(key) or control_character_problem(value))
        if problem:
            at = _layout(parser, text, section).lines.get(key, "?")
            raise ConfigError(path, key, f"line {at}: {problem}")
        values[key] = value
    return RawConfig(values, source=path)



def _unset_variable_problem(option: str, name: str) -> str:
    """An on_change command's ``$LIVEDATA_DEST`` is meant for the hook's shell: say how to write it."""
    problem = f"environment variable ${name} is not set"
    if option.endswith(".on_change"):
        problem += f" (for the hook's own environment, such as $LIVEDATA_DEST, write $${name}: a single $ is " \
                   "expanded when the config is read)"
    return problem


def _refuse_continuation(parser: configparser.ConfigParser, text: str, path: str, section: str, key: str,
                         value: str) -> None:
    if "\n" in value:  # only configparser's joining of an indented line puts one there
        layout = _layout(parser, text, section)
        at, joined = layout.lines.get(key, "?"), layout.continued.get(key, "?")
        raise ConfigError(path, key, f"line {joined}: this indented line would be joined to the value of {key} "
                          f"(line {at}); continuation lines are not supported: write each key and each value "
                          "on one line, without indentation")  # fmt: skip


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_NAMES = {"\n": "a line break", "\r": "a carriage return", "\t": "a tab"}


def control_character_problem(text: str) -> str | None:
    """Why ``text`` cannot be a key or value: a control character (line breaks included); None when it has none.

    No setting needs one, and each is a trap: a line break in a dest creates a
    directory whose name holds it, and in a log line it forges a second line.
    """
    match = _CONTROL.search(text)
    if match is None:
        return None
    char = match.group()
    name = _CONTROL_NAMES.get(char, "a control character")
    return f"contains {name} (U+{ord(char):04X}), which no setting may hold"


@dataclass
class _Layout:
    """Where a section's keys are in the file (key -> line), and which values go on over indented lines."""

    lines: dict[str, int]
    continued: dict[str, int]  # key -> the first line configparser joined to its value


_NON_SPACE = re.compile(r"\S")


def _layout(parser: configparser.ConfigParser, text: str, section: str) -> _Layout:
    """Follow configparser's own line rules (for a file it accepted) to find each key's line and continuations.

    configparser joins a non-blank line indented deeper than the key line
    above it to that key's value, blank and comment lines in between
    included, and keeps no line numbers: this pass recovers them (only to
    report an error: it costs about as much as the parse).  Keys of
    the ``[DEFAULT]`` section, which configparser merges into every section,
    are found too (the section's own line wins).
    """
    sections = (section, parser.default_section)
    found: dict[str, dict[str, int]] = {name: {} for name in sections}
    continued: dict[str, dict[str, int]] = {name: {} for name in sections}
    current: str | None = None
    option: str | None = None
    indent_level = 0
    for lineno, line in enumerate(text.split("\n"), start=1):
        content = _without_comment(line)
        if not content:
            continue  # neither ends a value nor starts one, as in configparser (empty_lines_in_values)
        first = _NON_SPACE.search(line)
        indent = first.start() if first else 0
        if option is not None and indent > indent_level:
            if current in sections:
                continued[current].setdefault(option, lineno)
            continue
        indent_level = indent
        header = parser.SECTCRE.match(content)
        if header:
            current, option = header.group("header"), None
            continue
        match = parser.OPTCRE.match(content)
        option = parser.optionxform(match.group("option").rstrip()) if match else None
        if option is not None and current in sections:
            found[current].setdefault(option, lineno)
    layout = _Layout({}, {})
    for key in found[parser.default_section].keys() | found[section].keys():
        where = section if key in found[section] else parser.default_section
        layout.lines[key] = found[where][key]
        if key in continued[where]:
            layout.continued[key] = continued[where][key]
    return layout


_INLINE_COMMENT = re.compile(r"(?:^|\s)[;#]")


def _without_comment(line: str) -> str:
    """The line's content without its comment (``;`` or ``#`` at the start or after whitespace), stripped."""
    match = _INLINE_COMMENT.search(line)
    return (line[: match.start()] if match else line).strip()


# --- value parsers ------------------------------------------------------------------------------
# Each parser takes the raw string and returns a typed value or raises ValueError
# with a message that reads well after "<file>: <key>: ".

Parser = Callable[[str], Any]


def string(text: str) -> str:
    """Any non-empty string."""
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def integer(text: str) -> int:
    try:
        return int(text.strip(), 10)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None


_SIZE_UNITS = {"": 1, "b": 1, "bytes": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}
_SIZE = re.compile(r"(?P<count>\d+)\s*(?P<unit>[a-z]*)")


def byte_size(text: str) -> int:
    """A size in bytes: ``1048576``, or with a binary unit, ``64 MiB`` (KiB, MiB, GiB; case does not matter)."""
    match = _SIZE.fullmatch(text.strip().lower())
    if not match or match.group("unit") not in _SIZE_UNITS:
        raise ValueError(f"{text.strip()!r} is not a size in bytes (like '1048576' or '64 MiB')")
    return int(match.group("count")) * _SIZE_UNITS[match.group("unit")]


def one_of(*choices: str) -> Parser:
    """One of a fixed set of words, compared without regard to case."""

    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"{text.strip()!r} is not one of {', '.join(choices)}")
        return value

    return parse


def boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"{text!r} is not a boolean (use true or false)")


def file_mode(text: str) -> int:
    """Octal permission bits: ``0400``, ``400`` and ``0o400`` all mean the same."""
    digits = text.strip().lower()
    digits = digits[2:] if digits.startswith("0o") else digits
    if not digits or not re.fullmatch(r"[0-7]{1,4}", digits):
        raise ValueError(f"{text.strip()!r} is not an octal file mode")
    return int(digits, 8)


_TIME_UNITS = {
    "ms": 0.001, "millisecond": 0.001, "milliseconds": 0.001,
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
}  # fmt: skip
_TIMESPAN = re.compile(r"(?P<count>\d+(?:\.\d+)?)\s*(?P<unit>[a-z]+)")


def timespan(text: str) -> float:
    """A duration in seconds from ``5 seconds``, ``300 milliseconds``, ``1.5 seconds``, ``2 minutes``."""
    match = _TIMESPAN.fullmatch(text.strip().lower())
    if not match or match.group("unit") not in _TIME_UNITS:
        raise ValueError(f"{text.strip()!r} is not a time span (like '5 seconds' or '300 milliseconds')")
    return float(match.group("count")) * _TIME_UNITS[match.group("unit")]


def comma_list(item: Parser) -> Parser:
    """A comma-separated list whose items each go through ``item``; blanks are dropped."""

    def parse(text: str) -> list[Any]:
        return [item(part) for part in text.split(",") if part.strip()]

    return parse


def absolute_path(text: str) -> str:
    path = text.strip()
    if not path.startswith("/"):
        raise ValueError(f"{path!r} is not an absolute path")
    return os.path.normpath(path)


def znode_path(text: str) -> str:
    path = text.strip()
    if not path.startswith("/"):
        raise ValueError(f"{path!r} is not an absolute ZooKeeper path")
    if path != "/" and (path.endswith("/") or "//" in path):
        raise ValueError(f"{path!r} is not a valid ZooKeeper path")
    return path


MAX_ID = 2**32 - 2  # (uid_t)-1 means "leave unchanged" to chown(2), so the largest usable id is one less


def _numeric_id(name: str, kind: str) -> int:
    number = int(name)
    if number > MAX_ID:
        raise ValueError(f"{kind} {number} is out of range (0 to {MAX_ID})")
    return number


def unix_user(text: str) -> int:
    """A user name or numeric uid, resolved now so a typo fails at start, not at the first write."""
    name = text.strip()
    if name.isdigit():
        return _numeric_id(name, "uid")
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        raise ValueError(f"{name!r} is not a known user") from None


def unix_group(text: str) -> int:
    name = text.strip()
    if name.isdigit():
        return _numeric_id(name, "gid")
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ValueError(f"{name!r} is not a known group") from None


# --- the declarative spec ---------------------------------------------------------------------


@dataclass(frozen=True)
class Optional(Generic[T]):
    """A key that may be absent (or blank), in which case ``default`` is used as is."""

    parser: Callable[[str], T]
    default: Any = None


@dataclass(frozen=True)
class DictOf:
    """``prefix.<name>.<field>`` groups, e.g. ``nodes.a.source`` / ``nodes.a.dest``: one sub-spec per name."""

    spec: Spec


Spec = Mapping[str, Any]
"""Nested dict mirroring the dotted keys; leaves are parsers, :class:`Optional` or :class:`DictOf`."""


class ConfigNamespace(dict[str, Any]):
    """Parsed values, reachable both as ``ns["zookeeper"]["hosts"]`` and ``ns.zookeeper.hosts``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def parse_config(config: Mapping[str, str], spec: Spec) -> ConfigNamespace:
    """Parse the keys named by ``spec``; keys the spec does not name are ignored (other tools may share the file)."""
    return _parse_level(config, spec, prefix="", source=source_of(config))


def _parse_level(config: Mapping[str, str], spec: Spec, prefix: str, source: str) -> ConfigNamespace:
    result = ConfigNamespace()
    for name, rule in spec.items():
        key = prefix + name
        if isinstance(rule, DictOf):
            result[name] = _parse_dict_of(config, rule.spec, key + ".", source)
        elif isinstance(rule, Mapping):
            result[name] = _parse_level(config, rule, key + ".", source)
        else:
            result[name] = _parse_value(config, key, rule, source)
    return result


def _parse_dict_of(config: Mapping[str, str], spec: Spec, prefix: str, source: str) -> dict[str, ConfigNamespace]:
    # One pass over the keys: configs with tens of thousands of nodes are real.
    names: dict[str, bool] = {}  # name -> has at least one "<prefix><name>.<field>" key
    for key in config:
        if key.startswith(prefix):
            name, dot, _ = key[len(prefix) :].partition(".")
            names[name] = names.get(name, False) or bool(dot)
    for name, has_fields in sorted(names.items()):
        if not name:
            raise ConfigError(source, prefix, "a name is missing after the dot")
        if not has_fields:
            raise ConfigError(source, prefix + name, f"expected keys like {prefix}{name}.<field>")
    return {name: _parse_level(config, spec, f"{prefix}{name}.", source) for name in sorted(names)}


def _parse_value(config: Mapping[str, str], key: str, rule: Any, source: str) -> Any:
    raw = config.get(key)
    if isinstance(rule, Optional):
        if raw is None or not raw.strip():
            return rule.default
        rule = rule.parser
    elif raw is None:
        raise ConfigError(source, key, "required key is missing")
    problem = control_character_problem(raw)  # read_config refuses these; applications pass their own mappings
    if problem:
        raise ConfigError(source, key, problem)
    try:
        return rule(raw)
    except ValueError as e:
        raise ConfigError(source, key, str(e)) from None


def unknown_keys(config: Mapping[str, str], prefix: str, fields: Mapping[str, Any]) -> list[str]:
    """Keys under ``prefix.<name>.`` whose field the spec does not know: likely typos worth rejecting."""
    unknown = []
    for key in config:
        if key.startswith(prefix):
            parts = key[len(prefix):].split(".", 1)
            if len(parts) == 2 and parts[1] not in fields:
                unknown.append(key)
    return sorted(unknown)


# --- which keys livedata knows ------------------------------------------------------------------
# A config file is shared with the application's own settings, so keys outside livedata's namespaces are
# left alone.  Inside them a key nobody reads is almost always a typo (``zookeeper.timout``), and a typo
# that is silently ignored is a setting that silently does not apply: those keys are refused.

NAMESPACES = ("watcher", "zookeeper", "secrets", "nodes", "trees", "writer")
"""Top-level key prefixes that belong to livedata; every key under them must be declared by some spec."""

SPEC_MODULES = ("livedata.zookeeper", "livedata.secrets", "livedata.watcher", "livedata.writer")
"""Modules whose import registers their specs: together they declare every key any livedata program reads.

Each program checks against the union, so one file can serve the watcher and
the writer alike without one of them calling the other's keys typos.
"""

NAMESPACE_CUTOFF = 0.85  # 'node'/'nodes' and 'secret'/'secrets' are typos; 'notes' (0.8) is someone else's key

_known: dict[str, Any] = {}


def register(spec: Spec) -> Spec:
    """Declare a spec's keys as known to livedata and return the spec unchanged.

    Modules declare their specs as ``X_SPEC = register({...})``; a key is
    added to a program by adding it to its spec, nothing else.
    """
    _merge(_known, spec)
    return spec


def _merge(into: dict[str, Any], spec: Spec) -> None:
    for name, rule in spec.items():
        existing = into.get(name)
        if isinstance(rule, DictOf):
            fields: dict[str, Any] = dict(existing.spec) if isinstance(existing, DictOf) else {}
            _merge(fields, rule.spec)
            into[name] = DictOf(fields)
        elif isinstance(rule, Mapping):
            level: dict[str, Any] = existing if isinstance(existing, dict) else {}
            _merge(level, rule)
            into[name] = level
        else:
            into[name] = rule


def known_keys() -> Mapping[str, Any]:
    """The union of every livedata program's spec (imports the modules that declare them)."""
    for module in SPEC_MODULES:
        importlib.import_module(module)
    return _known


def check_known_keys(config: Mapping[str, str]) -> None:
    """Refuse the first key (in sorted order) that is in a livedata namespace but unknown, or looks like one.

    The message names the key and, where one is close, the key that was
    probably meant (``did you mean zookeeper.timeout?``).
    """
    known = known_keys()
    fine_shapes: set[tuple[str, ...]] = set()  # nodes.<any name>.source: checked once, not once per node
    bad: dict[str, str] = {}
    for key in config:
        parts = key.split(".")
        shape = (parts[0], *parts[2:]) if len(parts) > 2 and isinstance(known.get(parts[0]), DictOf) else None
        if shape is not None and shape in fine_shapes:
            continue
        problem = unknown_key_problem(known, key)
        if problem:
            bad[key] = problem
        elif shape is not None:
            fine_shapes.add(shape)
    if bad:
        first = min(bad)
        raise ConfigError(source_of(config), first, bad[first])


def unknown_key_problem(known: Mapping[str, Any], key: str) -> str | None:
    """Why ``key`` is not a livedata key it claims (or seems) to be; None when it is known or not ours."""
    parts = key.split(".")
    if parts[0] not in NAMESPACES:
        close = difflib.get_close_matches(parts[0], NAMESPACES, n=1, cutoff=NAMESPACE_CUTOFF)
        if close and len(parts) > 1:
            meant = ".".join([close[0], *parts[1:]])
            return f"unknown key: {parts[0]}. is not a livedata namespace; did you mean {meant}?"
        return None
    level: Any = known
    for index, part in enumerate(parts):
        if isinstance(level, DictOf):
            if not part:
                return "a name is missing after the dot"
            level = level.spec
            continue
        if not isinstance(level, Mapping):
            return f"unknown key: {'.'.join(parts[:index])} takes no sub-keys"
        if part not in level:
            return _unknown_part(parts, index, level)
        level = level[part]
    if isinstance(level, DictOf):
        return f"expected keys like {key}.<name>.<field>"
    if isinstance(level, Mapping):
        return f"expected keys like {key}.<field>"
    return None


def _unknown_part(parts: list[str], index: int, level: Mapping[str, Any]) -> str:
    part = parts[index]
    close = difflib.get_close_matches(part, list(level), n=1, cutoff=0.6)
    close = close or [known for known in level if part and known.startswith(part)][:1]  # resync -> resync_interval
    if close:
        return f"unknown key; did you mean {'.'.join([*parts[:index], close[0], *parts[index + 1:]])}?"
    return f"unknown key ({'.'.join(parts[:index])}.* takes: {', '.join(level)})"
