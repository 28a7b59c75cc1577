"""Configuration limits (issue 11, "Hostile input"): YAML alias/node/depth budget, finite numbers within
their declared ranges, bounded strings, DBC size and message limits, and docs/configuration.md that
cannot drift from the schema declarations.

The number and string properties run over every key the schema declares (``schema.leaves``), so a field
added later is covered without a new test.
"""

from __future__ import annotations

import copy
import math
import re
import tracemalloc
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import dbc as dbc_module
from agent import schema, yamlsrc
from agent.camera.config import camera_config
from agent.config import AgentConfig, limits_table, load_config, parse_config
from agent.dbc import DbcError, load_dbc
from agent.diag.config import diagnostics_config
from agent.flow.parts import collection_plan
from agent.incident.config import incident_config
from agent.ownerpage.config import owner_page_config
from agent.privacy.config import consent_config
from agent.uplink.config import uplink_config
from agent.yamlsrc import ConfigError, load_file, load_text

SOURCE = "limits.yaml"
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REPO = Path(__file__).resolve().parents[1]

BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def every_section(text: str, source: str = SOURCE) -> AgentConfig:
    """What `vehicle-agent run` does with a config before anything starts."""
    config = parse_config(text, source, Path("/nonexistent-base"))
    collection_plan(config)
    uplink_config(config)
    incident_config(config)
    camera_config(config)
    consent_config(config)
    owner_page_config(config)
    diagnostics_config(config)
    return config


def peak_bytes(action) -> tuple[int, BaseException | None]:
    tracemalloc.start()
    error = None
    try:
        action()
    except BaseException as exc:  # the caller decides what may be raised
        error = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, error


# -- YAML: aliases, nodes, depth ------------------------------------------------------------------------------

def test_billion_laughs_is_refused_quickly_naming_line_and_alias():
    peak, error = peak_bytes(lambda: load_text(BILLION_LAUGHS, "agent.yaml"))
    assert isinstance(error, ConfigError)
    assert str(error) == ("agent.yaml:4: d[0]: alias *c: more than 100 alias expansions in one document "
                          "(refused as an alias bomb)")
    assert peak < 5_000_000


@pytest.mark.parametrize(("text", "message"), [
    ("a: &a [*a]\n", "limits.yaml:1: a[0]: alias *a refers to a node that contains it (&a, line 1)"),
    ("vehicle: &v\n  id: x\n  loop: *v\n", "limits.yaml:3: vehicle.loop: alias *v refers to a node that contains it"),
    ("a: &a\n  - b: [1, {c: *a}]\n", "limits.yaml:2: a[0].b[1].c: alias *a refers to a node that contains it"),
])
def test_a_recursive_alias_is_a_clear_error_never_a_recursion_error(text, message):
    with pytest.raises(ConfigError) as info:
        load_text(text, SOURCE)
    assert str(info.value).startswith(message)
    assert "recursive aliases are refused" in str(info.value)


def test_the_node_budget_counts_what_aliases_repeat():
    wide = "a: &a [" + ", ".join(["1"] * 6000) + "]\nb: *a\n"
    with pytest.raises(ConfigError, match=r"^limits\.yaml:2: b: alias \*a expands past 10000 nodes"):
        load_text(wide, SOURCE)
    many = "\n".join(f"k{i}: {i}" for i in range(6000))  # 12,000 nodes without any alias
    with pytest.raises(ConfigError, match=r"^limits\.yaml:\d+: more than 10000 YAML nodes"):
        load_text(many, SOURCE)


def test_nesting_depth_file_size_and_key_length_are_bounded(tmp_path):
    with pytest.raises(ConfigError, match=r"^limits\.yaml:1: nested deeper than 50 levels"):
        load_text("[" * 5000 + "]" * 5000, SOURCE)
    chain = "a0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 60))
    with pytest.raises(ConfigError, match=r"nested deeper than 50 levels|more than 100 alias expansions"):
        load_text(chain, SOURCE)
    with pytest.raises(ConfigError, match=r"^limits\.yaml:1: a mapping key longer than 128 characters"):
        load_text("k" * 200 + ": 1\n", SOURCE)
    big = tmp_path / "big.yaml"
    big.write_text("a: '" + "x" * (yamlsrc.MAX_FILE_BYTES + 10) + "'\n")
    with pytest.raises(ConfigError, match=r"big\.yaml: larger than 1048576 bytes"):
        load_file(big)
    with pytest.raises(ConfigError, match=r"^limits\.yaml:1: a: invalid YAML value: Exceeds the limit"):
        load_text("a: " + "1" * 5000 + "\n", SOURCE)


def test_a_few_plain_aliases_still_work():
    doc = load_text("base: &sock {host: 127.0.0.1, port: 29536}\nx: *sock\ny: [*sock, *sock]\n", SOURCE)
    assert doc.data["x"] == doc.data["y"][1] == {"host": "127.0.0.1", "port": 29536}
    assert doc.line(("y", 1)) == 3


ANCHORS = st.sampled_from(["a", "b", "c", "d"])


@st.composite
def alias_documents(draw) -> str:
    """Documents of anchored lists and mappings that alias each other, themselves, or nothing yet defined."""
    lines = []
    for index in range(draw(st.integers(1, 10))):
        anchor = draw(ANCHORS)
        items = draw(st.lists(st.one_of(ANCHORS.map(lambda name: f"*{name}"), st.sampled_from(["1", "x", ".nan"])),
                              max_size=12))
        body = ("[" + ", ".join(items) + "]") if draw(st.booleans()) else \
            ("{" + ", ".join(f"k{i}: {item}" for i, item in enumerate(items)) + "}")
        lines.append(f"n{index}: &{anchor} {body}")
    return "\n".join(lines) + "\n"


@PROPS
@given(alias_documents())
def test_random_alias_structures_raise_only_config_errors_within_a_memory_bound(text):
    peak, error = peak_bytes(lambda: every_section(text))
    assert error is None or isinstance(error, ValueError), repr(error)
    if error is not None:
        assert str(error).startswith(SOURCE), str(error)
    assert peak < 20_000_000, peak


# -- numbers and strings of every declared key ---------------------------------------------------------------

LEAVES = list(schema.leaves(AgentConfig))
NUMBERS = [leaf for leaf in LEAVES if int in leaf.types or float in leaf.types]
STRINGS = [leaf for leaf in LEAVES if str in leaf.types]
# What a key needs around it to be read at all (required neighbours).
CONTEXT = {
    "buses[]": {"name": "b1"},
    "uplink": {"region": "cn-test", "broker": {"host": "h"}},
    "uplink.broker": {"host": "h"},
    "uplink.allowed_brokers[]": {"host": "h"},
    "uplink.tls": {"ca": "ca.pem"},
    "collection.campaigns[]": {"name": "c1", "signals": ["x"]},
    "collection.campaigns[].signals[]": {"match": "x"},
    "collection.campaigns[].trigger": {"when": "a > 1"},
    "incidents.triggers[]": {"name": "t1", "when": "a > 1"},
}
# Keys whose valid values also depend on a neighbour (cross-field rules stated in the docs).
NEIGHBOURS = {
    "uplink.backoff_min": lambda value: {"backoff_max": 86_400},
    "uplink.backoff_max": lambda value: {"backoff_min": 0.01},
    "incidents.pre_s": lambda value: {"post_s": 0 if value > 0 else 1},
    "incidents.post_s": lambda value: {"pre_s": 0 if value > 0 else 1},
}


def document(key: str, value) -> tuple[dict, str]:
    """A config holding ``value`` at ``key`` (``buses[].bitrate``), and the path errors name (``buses[0].bitrate``)."""
    tree: dict = {}
    node, prefix, where = tree, "", ""
    *parents, last = key.split(".")
    for part in parents:
        name, is_list = part.removesuffix("[]"), part.endswith("[]")
        prefix, where = f"{prefix}.{part}".lstrip("."), f"{where}.{name}".lstrip(".") + ("[0]" if is_list else "")
        if is_list:
            items = node.setdefault(name, [])
            if not items or not isinstance(items[0], dict):
                items[:] = [{}]
            node = items[0]
        else:
            node = node.setdefault(name, {})
        for context_key, context_value in CONTEXT.get(prefix, {}).items():
            node.setdefault(context_key, copy.deepcopy(context_value))
    name = "telemetry" if last == "<key>" else last.removesuffix("[]")
    node[name] = [value] if last.endswith("[]") else value
    where = f"{where}.{name}".lstrip(".") + ("[0]" if last.endswith("[]") else "")
    finite = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
    if key in NEIGHBOURS and finite:
        node.update(NEIGHBOURS[key](value))
    return tree, where


def as_yaml(tree: dict) -> str:
    return yaml.safe_dump(tree, sort_keys=False, allow_unicode=True, width=10**9)


def test_the_document_helper_reaches_every_declared_key():
    tree, where = document("collection.campaigns[].signals[].period_ms", 5.0)
    assert where == "collection.campaigns[0].signals[0].period_ms"
    assert tree["collection"]["campaigns"][0] == {"signals": [{"period_ms": 5.0, "match": "x"}], "name": "c1"}
    for leaf in NUMBERS:
        lo = leaf.limit.num.lo
        value = lo + 1 if leaf.limit.num.above else lo
        every_section(as_yaml(document(leaf.key, int(value) if int in leaf.types else float(value))[0]))


def in_range(leaf: schema.Leaf) -> st.SearchStrategy:
    rng = leaf.limit.num
    if int in leaf.types and float not in leaf.types:
        return st.integers(math.ceil(rng.lo) + (1 if rng.above else 0), math.floor(rng.hi))
    return st.floats(rng.lo, rng.hi, exclude_min=rng.above, allow_nan=False, allow_infinity=False)


@st.composite
def good_numbers(draw) -> tuple[schema.Leaf, float]:
    leaf = draw(st.sampled_from(NUMBERS))
    return leaf, draw(in_range(leaf))


@PROPS
@given(good_numbers())
def test_any_finite_number_in_range_is_accepted(case):
    leaf, value = case
    config = every_section(as_yaml(document(leaf.key, value)[0]))
    if leaf.key == "batching.max_age_s":
        assert config.batching.max_age_s == value


@st.composite
def bad_numbers(draw) -> tuple[schema.Leaf, float]:
    leaf = draw(st.sampled_from(NUMBERS))
    rng = leaf.limit.num
    integer = int in leaf.types and float not in leaf.types
    outside = st.one_of(
        st.integers(int(rng.hi) + 1, int(rng.hi) + 2**80) if integer else
        st.floats(rng.hi, 1e308, exclude_min=True),
        st.integers(int(rng.lo) - 2**80, math.ceil(rng.lo) - (0 if rng.above else 1)) if integer else
        st.floats(-1e308, rng.lo, exclude_max=not rng.above),
    )
    if not integer:
        outside = st.one_of(outside, st.sampled_from([math.nan, math.inf, -math.inf]))
    return leaf, draw(outside)


@PROPS
@given(bad_numbers())
def test_nan_inf_and_out_of_range_numbers_name_file_line_and_key(case):
    leaf, value = case
    tree, where = document(leaf.key, value)
    with pytest.raises(ValueError) as info:
        every_section(as_yaml(tree))
    message = str(info.value)
    assert re.match(rf"{re.escape(SOURCE)}:\d+: {re.escape(where)}: must be ", message), message
    assert "between" in message and "got" in message, message


def test_the_issue_examples_give_the_documented_message():
    with pytest.raises(ConfigError) as info:
        parse_config("buffer:\n  quota_mb: .inf\n", "agent.yaml")
    assert str(info.value) == ("agent.yaml:2: buffer.quota_mb: must be a finite number between 0.001 and 1048576, "
                               "got inf")
    with pytest.raises(ConfigError) as info:
        parse_config("batching: {max_age_s: .nan}\n", "agent.yaml")
    assert str(info.value) == ("agent.yaml:1: batching.max_age_s: must be a finite number between 0.01 and 86400, "
                               "got nan")
    with pytest.raises(ConfigError, match=r"^agent\.yaml:1: buses\[0\]\.bitrate: must be an integer between 1000 and "
                                          r"10000000, got 10{39}\.\.\.$"):
        parse_config("buses: [{name: a, bitrate: 1" + "0" * 40 + "}]\n", "agent.yaml")
    with pytest.raises(ConfigError, match=r"^agent\.yaml:1: buffer\.quota_mb: must be a finite number between 0\.001 "):
        parse_config("buffer: {quota_mb: 1" + "0" * 400 + "}\n", "agent.yaml")  # too big for a float


@st.composite
def long_strings(draw) -> tuple[schema.Leaf, str]:
    leaf = draw(st.sampled_from(STRINGS))
    kind = leaf.limit.text or schema.NAME
    return leaf, "a" * draw(st.integers(kind.max_len + 1, kind.max_len + 70_000))


@PROPS
@given(long_strings())
def test_a_string_past_its_maximum_length_is_refused_clearly(case):
    leaf, value = case
    tree, where = document(leaf.key, value)
    with pytest.raises(ValueError) as info:
        every_section(as_yaml(tree))
    message = str(info.value)
    assert message.startswith(f"{SOURCE}:") and f" {where}: must be at most " in message, message
    assert len(message) < 300, message  # the value itself is cut short


@pytest.mark.parametrize("leaf", STRINGS, ids=[leaf.key for leaf in STRINGS])
def test_a_string_at_its_maximum_length_is_not_a_length_error(leaf):
    kind = leaf.limit.text or schema.NAME
    try:
        every_section(as_yaml(document(leaf.key, "a" * kind.max_len)[0]))
    except ValueError as exc:  # a file that does not exist, a VIN that is not one, ...: not the length
        assert "must be at most" not in str(exc)


@pytest.mark.parametrize(("text", "message"), [
    ("vehicle: {id: 'a/b#'}\n", "limits.yaml:1: vehicle.id: may contain only letters, digits, -, _ and ., got 'a/b#'"),
    ("vehicle: {id: ''}\n", "limits.yaml:1: vehicle.id: must not be empty"),
    ("vehicle: {model: \"a\\0b\"}\n", "limits.yaml:1: vehicle.model: must not contain control characters"),
    ("uplink: {region: 'cn north', broker: {host: h}}\n", "limits.yaml:1: uplink.region: may contain only"),
    ("uplink: {region: r, broker: {host: h}, client_id: 'a+b'}\n", "limits.yaml:1: uplink.client_id: may contain"),
    ("uplink: {region: r, broker: {host: 'h/x'}}\n", "limits.yaml:1: uplink.broker.host: may contain only"),
    ("buffer: {ttl_s: {'a b': 5}}\n", "limits.yaml:1: buffer.ttl_s.a b: stream name may contain only"),
    ("buses: [{name: b, options: {port: .nan}}]\n",
     "limits.yaml:1: buses[0].options.port: must be a finite number between -9007199254740992"),
    ("incidents: {triggers: [{name: 'a b', when: x}]}\n",
     "limits.yaml:1: incidents.triggers[0].name: trigger names are 1-48 letters, digits, - or _, got 'a b'"),
])
def test_ids_have_a_safe_charset(text, message):
    with pytest.raises(ValueError) as info:
        every_section(text)
    assert str(info.value).startswith(message), str(info.value)


def test_a_70000_character_vehicle_id_is_refused_before_it_reaches_a_topic():
    with pytest.raises(ConfigError) as info:
        parse_config("vehicle:\n  id: " + "v" * 70_000 + "\n", "agent.yaml")
    assert str(info.value).startswith("agent.yaml:2: vehicle.id: must be at most 64 characters, got 70000 (")


def test_a_number_field_without_a_declared_range_is_a_programming_error():
    from dataclasses import dataclass

    @dataclass
    class Undeclared:
        x: float = 1.0

    with pytest.raises(TypeError, match="without a declared range"):
        schema.build(Undeclared, load_text("x: 2\n", SOURCE))
    with pytest.raises(TypeError, match="without a declared range"):
        schema.markdown_table(Undeclared)


def test_the_example_config_still_loads(repo_root):
    config = load_config(repo_root / "config" / "agent.yaml")
    for parse in (collection_plan, uplink_config, incident_config, camera_config, consent_config, owner_page_config,
                  diagnostics_config):
        parse(config)
    assert config.vehicle.id == "demo-truck-01"


# -- docs/configuration.md -----------------------------------------------------------------------------------

def test_every_schema_key_is_documented_with_its_limit(repo_root):
    text = (repo_root / "docs" / "configuration.md").read_text()
    match = re.search(r"<!-- limits-table:begin -->\n(.*?)\n<!-- limits-table:end -->", text, re.S)
    assert match, "docs/configuration.md lost its generated table markers"
    expected = limits_table()
    assert match.group(1) == expected, (
        "docs/configuration.md is out of date with the schema; regenerate the table with "
        "`python -c 'from agent.config import limits_table; print(limits_table())'`")
    for leaf in LEAVES:
        assert f"| `{leaf.key}` | {leaf.describe()} |" in text
    assert len(LEAVES) > 80
    for number in (yamlsrc.MAX_NODES, yamlsrc.MAX_ALIASES, yamlsrc.MAX_DEPTH, yamlsrc.MAX_FILE_BYTES,
                   dbc_module.MAX_DBC_BYTES, dbc_module.MAX_DBC_MESSAGES, dbc_module.MAX_DBC_SIGNALS):
        assert f"{number:,}" in text or str(number) in text, number


# -- DBC limits ----------------------------------------------------------------------------------------------

def synthetic_dbc(messages: int, signals: int = 1) -> str:
    lines = ['VERSION ""', "", "NS_ :", "", "BS_:", "", "BU_: ECU", ""]
    for m in range(messages):
        lines.append(f"BO_ {0x80000000 + m} MSG_{m}: 8 ECU")
        lines += [f' SG_ S{m}_{s} : {s * 8 % 64}|8@1+ (0.1,0) [0|25.5] "km/h" Vector__XXX' for s in range(signals)]
        lines.append("")
    return "\n".join(lines) + "\n"


def test_a_dbc_past_the_message_limit_is_refused_before_parsing(tmp_path):
    path = tmp_path / "many.dbc"
    path.write_text(synthetic_dbc(dbc_module.MAX_DBC_MESSAGES + 1))
    peak, error = peak_bytes(lambda: load_dbc(path))
    assert isinstance(error, DbcError)
    assert re.fullmatch(rf"{re.escape(str(path))}:\d+: DBC has more than the limit of 5000 messages \(BO_\); "
                        "refused unparsed", str(error)), str(error)
    assert peak < 10_000_000


def test_dbc_size_and_signal_limits(tmp_path, monkeypatch):
    path = tmp_path / "small.dbc"
    path.write_text(synthetic_dbc(20, signals=8))
    assert len(load_dbc(path).database.messages) == 20
    monkeypatch.setattr(dbc_module, "MAX_DBC_SIGNALS", 100)
    with pytest.raises(DbcError, match=r"small\.dbc:\d+: DBC has more than the limit of 100 signals \(SG_\)"):
        load_dbc(path)
    monkeypatch.setattr(dbc_module, "MAX_DBC_BYTES", 1000)
    with pytest.raises(DbcError, match=r"small\.dbc: DBC larger than the limit of 1000 bytes"):
        load_dbc(path)


def test_every_real_dbc_is_within_the_limits(repo_root, shared_data):
    paths = sorted([*(repo_root / "dbc").rglob("*.dbc"), *(shared_data / "dbc").rglob("*.dbc")])
    assert len(paths) > 20
    for path in paths:
        data = path.read_bytes()
        dbc_module._check_limits(path, data)  # the limits alone: some fixtures are broken DBCs on purpose
        assert len(data) < dbc_module.MAX_DBC_BYTES / 10
    for path in sorted((repo_root / "dbc").rglob("*.dbc")):  # the ones we ship load, limits and all
        assert load_dbc(path).database.messages
