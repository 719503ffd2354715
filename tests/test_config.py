"""Config reading and the declarative spec: every value type, and every way a file can be wrong."""
from __future__ import annotations

import os

import pytest

from livedata.config import (
    ConfigError,
    DictOf,
    Optional,
    absolute_path,
    comma_list,
    file_mode,
    integer,
    parse_config,
    read_config,
    string,
    timespan,
    unix_group,
    unix_user,
    znode_path,
)

pytestmark = pytest.mark.timeout(10)


def write(tmp_path, text: str | bytes, name: str = "test.ini") -> str:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


def test_keys_are_kept_exactly_as_written(tmp_path):
    path = write(tmp_path, "[live-data]\nzookeeper.hosts = a:1\nnodes.MyNode.dest = /x\n[other]\nk = v\n")
    config = read_config(path)
    assert dict(config) == {"zookeeper.hosts": "a:1", "nodes.MyNode.dest": "/x"}
    assert config.source == path


def test_environment_interpolation(tmp_path, monkeypatch):
    monkeypatch.setenv("LD_DIR", "/srv/data")
    monkeypatch.setenv("LD_NAME", "flags")
    path = write(tmp_path, "[live-data]\na = $LD_DIR/${LD_NAME}.json\nb = 100%% $$5 50%\n")
    config = read_config(path)
    assert config["a"] == "/srv/data/flags.json"
    assert config["b"] == "100%% $5 50%"


def test_unset_environment_variable_names_the_key(tmp_path, monkeypatch):
    monkeypatch.delenv("LD_SURELY_UNSET", raising=False)
    path = write(tmp_path, "[live-data]\nnodes.a.dest = $LD_SURELY_UNSET/x\n")
    with pytest.raises(ConfigError, match=r"nodes\.a\.dest: environment variable \$LD_SURELY_UNSET is not set"):
        read_config(path)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("zookeeper.hosts = a\n", r"expected a \[live-data\] section header"),
        ("[other]\nzookeeper.hosts = a\n", r"\[live-data\]: section is missing"),
        ("[live-data]\na = 1\na = 2\n", r": a: key appears twice"),
        ("[live-data]\njust some words\n", r"line 2: not a 'key = value' line"),
        (b"[live-data]\na = \xff\xfe\n", r"not a UTF-8 text file"),
    ],
)
def test_unusable_files(tmp_path, content, pattern):
    path = write(tmp_path, content)
    with pytest.raises(ConfigError, match=pattern) as info:
        read_config(path)
    assert str(info.value).startswith(path)
    assert "\n" not in str(info.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.ini: cannot read config file: No such file"):
        read_config(str(tmp_path / "missing.ini"))
    with pytest.raises(ConfigError, match=r"cannot read config file: Is a directory"):
        read_config(str(tmp_path))


@pytest.mark.parametrize(
    ("text", "expected"), [("0400", 0o400), ("400", 0o400), ("0o400", 0o400), ("0644", 0o644), ("4755", 0o4755)]
)
def test_file_modes(text, expected):
    assert file_mode(text) == expected


@pytest.mark.parametrize("text", ["0999", "rw-r--r--", "", "0o", "77777", "-1"])
def test_bad_file_modes(text):
    with pytest.raises(ValueError, match="is not an octal file mode"):
        file_mode(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5 seconds", 5.0), ("300 milliseconds", 0.3), ("2 minutes", 120.0), ("1.5 seconds", 1.5), ("1 hour", 3600.0),
     ("10s", 10.0), ("250ms", 0.25)],
)  # fmt: skip
def test_timespans(text, seconds):
    assert timespan(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5", "five seconds", "5 fortnights", "-5 seconds", "5 seconds ago"])
def test_bad_timespans(text):
    with pytest.raises(ValueError, match="is not a time span"):
        timespan(text)


def test_users_and_groups_by_name_and_id():
    assert unix_user("root") == 0
    assert unix_user("0") == 0
    assert unix_user("12345") == 12345
    assert unix_group("root") == 0
    with pytest.raises(ValueError, match="'no-such-user-xyz' is not a known user"):
        unix_user("no-such-user-xyz")
    with pytest.raises(ValueError, match="'no-such-group-xyz' is not a known group"):
        unix_group("no-such-group-xyz")


def test_paths():
    assert absolute_path("/var/local/x") == "/var/local/x"
    assert znode_path("/a/b") == "/a/b"
    with pytest.raises(ValueError, match="is not an absolute path"):
        absolute_path("var/x")
    with pytest.raises(ValueError, match="is not an absolute ZooKeeper path"):
        znode_path("a/b")
    with pytest.raises(ValueError, match="is not a valid ZooKeeper path"):
        znode_path("/a//b")


SPEC = {
    "zookeeper": {
        "hosts": comma_list(string),
        "timeout": Optional(timespan, 5.0),
        "retries": Optional(integer, 3),
    },
    "nodes": DictOf({"source": znode_path, "dest": absolute_path, "mode": Optional(file_mode, 0o400)}),
}


def test_parse_config_nested_and_dict_of():
    config = {
        "zookeeper.hosts": "a:1, b:2",
        "zookeeper.retries": "7",
        "nodes.x.source": "/x",
        "nodes.x.dest": "/tmp/x",
        "nodes.y.source": "/y",
        "nodes.y.dest": "/tmp/y",
        "nodes.y.mode": "0644",
        "unrelated.key": "ignored",
    }
    parsed = parse_config(config, SPEC)
    assert parsed.zookeeper.hosts == ["a:1", "b:2"]
    assert parsed.zookeeper.timeout == 5.0
    assert parsed.zookeeper.retries == 7
    assert parsed.nodes["x"].mode == 0o400
    assert parsed.nodes["y"].mode == 0o644
    assert sorted(parsed.nodes) == ["x", "y"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"zookeeper.hosts": None}, "prod.ini: zookeeper.hosts: required key is missing"),
        ({"zookeeper.retries": "many"}, "prod.ini: zookeeper.retries: 'many' is not an integer"),
        ({"nodes.b.mode": "0999"}, "prod.ini: nodes.b.mode: '0999' is not an octal file mode"),
        ({"nodes.b.dest": None}, "prod.ini: nodes.b.dest: required key is missing"),
        ({"nodes.b.dest": "relative/x"}, "prod.ini: nodes.b.dest: 'relative/x' is not an absolute path"),
        ({"zookeeper.timeout": "soon"}, "prod.ini: zookeeper.timeout: 'soon' is not a time span"),
        ({"nodes.c": "x"}, "prod.ini: nodes.c: expected keys like nodes.c.<field>"),
    ],
)
def test_parse_errors_name_file_and_key(overrides, message):
    from livedata.config import RawConfig

    values = {"zookeeper.hosts": "a:1", "nodes.b.source": "/b", "nodes.b.dest": "/tmp/b"}
    for key, value in overrides.items():
        if value is None:
            values.pop(key)
        else:
            values[key] = value
    with pytest.raises(ConfigError) as info:
        parse_config(RawConfig(values, source="conf/prod.ini"), SPEC)
    assert str(info.value).startswith("conf/" + message)


def test_config_module_does_not_import_kazoo_or_gevent():
    import subprocess
    import sys

    code = (
        "import sys, livedata.config, livedata; livedata.FileWatcher; "
        "print(sorted(m for m in sys.modules if m.startswith(('kazoo', 'gevent'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=os.getcwd())
    assert out.stdout.strip() == "[]"


# --- comments, keys livedata knows, id ranges ----------------------------------------------------


def test_inline_comments_after_whitespace_are_not_part_of_values(tmp_path):
    path = write(
        tmp_path,
        "[live-data]\n"
        "nodes.a.mode = 0400 ; optional, default 0400\n"
        "nodes.a.dest = /var/x\t# a tab works too\n"
        "  ; an indented comment line\n"
        "nodes.a.owner =   ; nothing but a comment: empty\n"
        "zookeeper.hosts = zk01:2181;not-a-comment\n"
        "# a comment line\n",
    )
    config = read_config(path)
    assert config["nodes.a.mode"] == "0400"
    assert config["nodes.a.dest"] == "/var/x"
    assert config["nodes.a.owner"] == ""
    assert config["zookeeper.hosts"] == "zk01:2181;not-a-comment"  # and zookeeper_hosts() refuses it


def test_only_the_expanded_prefixes_need_their_variables(tmp_path, monkeypatch):
    monkeypatch.delenv("LD_SURELY_UNSET", raising=False)
    monkeypatch.setenv("LD_ZK", "zk01:2181")
    path = write(tmp_path, "[live-data]\nzookeeper.hosts = $LD_ZK\nnodes.a.dest = $LD_SURELY_UNSET/x\n")
    config = read_config(path, expand=("zookeeper.",))
    assert config["zookeeper.hosts"] == "zk01:2181"
    assert config["nodes.a.dest"] == "$LD_SURELY_UNSET/x"


def test_numeric_ids_are_range_checked():
    assert unix_user("4294967294") == 2**32 - 2
    assert unix_group("0") == 0
    with pytest.raises(ValueError, match="uid 4294967295 is out of range"):
        unix_user("4294967295")
    with pytest.raises(ValueError, match="gid 4294967296 is out of range"):
        unix_group("4294967296")


KNOWN_KEY_CASES = [
    ("watcher.heartbeat_intreval", "did you mean watcher.heartbeat_interval?"),
    ("watcher.metrics_adress", "did you mean watcher.metrics_address?"),
    ("zookeeper.timout", "did you mean zookeeper.timeout?"),
    ("zookeeper.tsl.ca", "did you mean zookeeper.tls.ca?"),
    ("zookeeper.hosts.extra", "zookeeper.hosts takes no sub-keys"),
    ("secret.path", "secret. is not a livedata namespace; did you mean secrets.path?"),
    ("node.z.source", "node. is not a livedata namespace; did you mean nodes.z.source?"),
    ("zookeper.hosts", "did you mean zookeeper.hosts?"),
    ("nodes.a.sorce", "did you mean nodes.a.source?"),
    ("nodes.a.colour", "unknown key (nodes.a.* takes: source, dest"),
    ("writer.compres", "did you mean writer.compress?"),
    ("watcher", "expected keys like watcher.<field>"),
    ("nodes.b", "expected keys like nodes.b.<field>"),
]


@pytest.mark.parametrize(("key", "message"), KNOWN_KEY_CASES, ids=[case[0] for case in KNOWN_KEY_CASES])
def test_unknown_keys_in_livedata_namespaces_are_refused(key, message):
    from livedata.config import RawConfig, check_known_keys

    config = RawConfig({"zookeeper.hosts": "zk01:2181", key: "x"}, source="conf/prod.ini")
    with pytest.raises(ConfigError) as info:
        check_known_keys(config)
    assert str(info.value).startswith(f"conf/prod.ini: {key}: ")
    assert message in str(info.value)


def test_known_keys_and_other_programs_keys_are_accepted():
    from livedata.config import check_known_keys

    check_known_keys({
        "zookeeper.hosts": "zk01:2181", "zookeeper.tls.ca": "/ca.pem", "secrets.path": "/s.json",
        "watcher.heartbeat_interval": "1 minute", "watcher.state_dir": "/run/livedata",
        "nodes.a.source": "/a", "nodes.a.on_change": "true",
        # keys other work adds, registered ahead so configs using them are not refused
        "writer.compress": "gzip", "writer.max_payload_size": "1", "watcher.max_payload_size": "1",
        "trees.t.source": "/t", "trees.t.format": "json", "trees.t.on_change": "true",
        # the application's own keys share the file
        "live_data.flags.file": "/f", "example_app.listen": ":80", "notes.x": "y", "myapp.timout": "3",
    })  # fmt: skip


def test_a_spec_adds_its_keys_by_registering():
    import copy

    from livedata.config import _known, check_known_keys, register

    saved = copy.deepcopy(_known)
    try:
        register({"writer": {"brand_new_key": Optional(string)}})
        check_known_keys({"writer.brand_new_key": "x", "writer.compress": "gzip"})
    finally:
        _known.clear()
        _known.update(saved)


# --- continuation lines and control characters ---------------------------------------------------

CONTINUATIONS = [
    # (INI text, key named, line of the joined line)
    ("[live-data]\nnodes.a.dest = /d/q.json\n  nodes.b.source = /y\n  nodes.b.dest = /d/r.json\n", "nodes.a.dest", 3),
    ("[live-data]\nzookeeper.hosts = zk01:2181,\n    zk02:2181\nnodes.a.source = /a\n", "zookeeper.hosts", 3),
    ("[live-data]\na = 1\n\n; a comment\n\n\tb = 2\n", "a", 6),  # blank and comment lines do not end a value
    ("[live-data]\n  a = 1\n  b = 2\n    c = 3\n", "b", 4),  # deeper than the key line above
    ("[DEFAULT]\na = 1\n  b = 2\n[live-data]\nc = 3\n", "a", 3),  # DEFAULT's keys are merged into the section
]


@pytest.mark.parametrize(("text", "key", "line"), CONTINUATIONS, ids=["issue", "hosts", "blanks", "nested", "default"])
def test_continuation_lines_are_refused_naming_the_key_and_line(tmp_path, text, key, line):
    """configparser would join an indented line to the value above: a node silently dropped, a dest with a newline."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        read_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: line {line}: this indented line would be joined to the value of {key}")
    assert "continuation lines are not supported" in message
    assert "\n" not in message


def test_indentation_that_joins_nothing_is_accepted(tmp_path):
    path = write(
        tmp_path,
        "[other]\nk = a\n  b\n"  # another program's section: its own business
        "[live-data]\n  a = 1\n  b = 2\n; comment\n    ; indented comment\nc = 3\n",
    )
    assert dict(read_config(path)) == {"a": "1", "b": "2", "c": "3"}


CONTROL_CHARACTERS = [("/d/a\tb", "a tab (U+0009)"), *((f"/d/a{char}b", f"a control character (U+{ord(char):04X})")
                                                       for char in "\x0c\x1b\x7f\x85\u2028")]


@pytest.mark.parametrize(("value", "named"), CONTROL_CHARACTERS)
def test_control_characters_in_values_are_refused(tmp_path, value, named):
    path = write(tmp_path, f"[live-data]\nzookeeper.hosts = zk01:2181\nnodes.a.dest = {value}\n")
    with pytest.raises(ConfigError) as info:
        read_config(path)
    assert str(info.value).startswith(f"{path}: nodes.a.dest: line 3: contains {named}")
    assert "\n" not in str(info.value)


def test_a_line_break_from_the_environment_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("LD_DIR", "/srv/data\n/etc")
    path = write(tmp_path, "[live-data]\nzookeeper.hosts = zk01:2181\n\nnodes.a.dest = $LD_DIR/a\n")
    with pytest.raises(ConfigError, match=r"nodes\.a\.dest: line 4: contains a line break \(U\+000A\)"):
        read_config(path)


def test_control_characters_in_application_mappings_are_refused():
    """Applications pass their own mappings (not read by read_config): every parsed value is checked too."""
    with pytest.raises(ConfigError, match=r"^<config>: a\.path: contains a line break"):
        parse_config({"a.path": "/x\n/y"}, {"a": {"path": absolute_path}})
    with pytest.raises(ConfigError, match=r"a\.name: contains a tab"):
        parse_config({"a.name": "x\ty"}, {"a": {"name": Optional(string)}})


def test_zookeeper_client_from_config_refuses_a_line_break_in_its_settings():
    from livedata.zookeeper import zookeeper_client_from_config

    with pytest.raises(ConfigError, match=r"^<config>: zookeeper\.hosts: contains a line break \(U\+000A\)"):
        zookeeper_client_from_config(None, {"zookeeper.hosts": "zk01:2181,\nzk02:2181"})


def test_lines_joined_to_a_default_key_the_section_overrides_are_refused(tmp_path):
    """The section's own key hides [DEFAULT]'s from items(): the indented line joined to it must not vanish."""
    path = write(tmp_path, "[DEFAULT]\nnodes.a.dest = /d/a.json\n  nodes.b.source = /b\n"
                 "[live-data]\nnodes.a.dest = /d/a2.json\n")  # fmt: skip
    with pytest.raises(ConfigError, match=r": nodes\.a\.dest: line 3: this indented line would be joined"):
        read_config(path)


@pytest.mark.parametrize("key", ["a\x1b]0;title\x07b", "a\x1b[2Jb", "a\u2028b", "a\x85b"])
def test_a_key_refused_for_control_characters_is_named_with_them_escaped(tmp_path, key):
    """The one line must stay one line, and must not drive the terminal it is printed on."""
    path = write(tmp_path, f"[live-data]\nzookeeper.hosts = zk01:2181\n{key} = 1\n")
    with pytest.raises(ConfigError) as info:
        read_config(path)
    message = str(info.value)
    escaped = key.encode("unicode_escape").decode()
    assert message.startswith(f"{path}: {escaped}: line 3: contains a control character")
    assert not any(char in message for char in "\x07\x1b\x85\u2028\n")


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_a_byte_order_mark_and_any_line_ending_are_accepted(tmp_path, newline):
    """Windows editors save with CRLF and often a UTF-8 byte order mark: the file means the same."""
    text = newline.join(["[live-data]", "zookeeper.hosts = zk01:2181", "nodes.a.dest = /d/a.json ; note", ""])
    path = write(tmp_path, b"\xef\xbb\xbf" + text.encode())
    assert dict(read_config(path)) == {"zookeeper.hosts": "zk01:2181", "nodes.a.dest": "/d/a.json"}
