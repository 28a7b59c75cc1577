"""Expression language: tokenizer, parser, type checks and evaluation (no eval anywhere)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.collect.evaluate import SignalHistory, SignalIndex, compile_expression
from agent.collect.expr import (
    Arith,
    Call,
    Compare,
    Duration,
    ExprError,
    Logic,
    Name,
    Negate,
    Not,
    Number,
    Text,
    parse,
    tokenize,
)
from agent.yamlsrc import ConfigError
from tests.collect_support import make_specs

INDEX = SignalIndex(make_specs())


def compiled(text: str):
    return compile_expression(text, INDEX)


def error_of(text: str) -> ExprError:
    with pytest.raises(ExprError) as info:
        compiled(text)
    return info.value


# -- tokens and syntax ---------------------------------------------------------------


def test_tokens_keep_offsets_and_units():
    tokens = tokenize("change(Vehicle.Speed, 150ms) <= -8")
    assert [(t.kind, t.text, t.pos) for t in tokens] == [
        ("name", "change", 0), ("op", "(", 6), ("name", "Vehicle.Speed", 7), ("op", ",", 20),
        ("duration", "150ms", 22), ("op", ")", 27), ("op", "<=", 29), ("op", "-", 32), ("number", "8", 33),
        ("end", "", 34),
    ]
    assert tokens[4].value == 0.15
    assert tokenize("2s")[0].value == 2.0
    assert tokenize("1.5min")[0].value == 90.0
    assert tokenize("0x1F")[0].value == 31
    assert tokenize("1e3")[0].value == 1000.0
    assert tokenize("'P'")[0].value == "P"


def test_precedence_and_positions():
    node = parse("not a + b * -c > 2 and (x or y)")
    assert node == Logic("and", (
        Not(Compare(">", Arith("+", Name("a", 4), Arith("*", Name("b", 8), Negate(Name("c", 13), 12), 10), 6),
                    Number(2, 17), 15), 0),
        Logic("or", (Name("x", 24), Name("y", 29)), 24),
    ), 0)


def test_or_binds_looser_than_and():
    node = parse("a or b and c")
    assert isinstance(node, Logic) and node.op == "or"
    assert node.operands[1] == Logic("and", (Name("b", 5), Name("c", 11)), 5)


def test_negative_literal_is_folded_and_calls_parse():
    assert parse("-8") == Number(-8, 0)
    assert parse("change(S, 2s)") == Call("change", (Name("S", 7), Duration(2.0, 10)), 0)
    assert parse('G == "P"') == Compare("==", Name("G", 0), Text("P", 5), 2)


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("", 0, "empty expression"),
        ("a = 1", 2, "use == to compare"),
        ("a && b", 2, "use 'and'"),
        ("a || b", 2, "use 'or'"),
        ("!a", 0, "use 'not'"),
        ('G == "P', 5, "text is not closed"),
        ("(a > 1", 6, "expected ')' to close the '(' at column 1, got the end"),
        ("f(a, (b)", 8, "expected ')' to close the '(' at column 2, got the end"),
        ("a > 1)", 5, "unexpected ')' after a complete expression"),
        ("a >", 3, "expected a value, got the end"),
        ("a < b < c", 6, "comparisons cannot be chained"),
        ("change(a, 3parsecs)", 11, "unknown unit 'parsecs'"),
        ("a > 1 b", 6, "unexpected 'b'"),
        ("f(a,)", 4, "expected a value, got ')'"),
    ],
)
def test_syntax_errors_point_at_the_offending_character(text, position, fragment):
    with pytest.raises(ExprError) as info:
        parse(text)
    assert info.value.position == position
    assert fragment in info.value.problem
    assert str(info.value).startswith(f"column {position + 1} of the expression: ")
    assert isinstance(info.value, ConfigError)  # prints as one line in the CLI


def test_deep_nesting_is_an_error_not_a_recursion_error():
    with pytest.raises(ExprError, match="nested deeper"):
        parse("(" * 500 + "1" + ")" * 500)
    with pytest.raises(ExprError, match="nested deeper"):
        parse("not " * 500 + "a")
    with pytest.raises(ExprError, match="longer than"):
        parse("a + " * 2000 + "a")


def test_python_code_is_just_bad_syntax():
    with pytest.raises(ExprError):
        compiled('__import__("os").system("true")')
    with pytest.raises(ExprError):
        compiled("[x for x in ()]")


# -- checks against the DBC signals -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("Vehicle.Sped > 1", 0, "unknown signal 'Vehicle.Sped' (did you mean Vehicle.Speed?)"),
        ("foo(Vehicle.Speed)", 0, "unknown function 'foo'"),
        ("chnage(Vehicle.Speed, 1s) > 1", 0, "did you mean change?"),
        ("abs(Vehicle.Speed, 1) > 1", 0, "abs() takes 1 argument, got 2"),
        ("max(Vehicle.Speed) > 1", 0, "max() takes at least 2 arguments, got 1"),
        ("change(Vehicle.Speed, 150) < 0", 22, "needs a window with a time unit"),
        ("change(Vehicle.Speed + 1, 1s) < 0", 7, "change() needs a signal name"),
        ("change(Vehicle.Speed, 0ms) < 0", 22, "longer than zero"),
        ("prev(3) > 1", 5, "prev() needs a signal name"),
        ("Vehicle.Speed > 2s", 16, "only allowed as change()'s window"),
        ('Vehicle.Speed == "fast"', 17, "Vehicle.Speed has no value labels"),
        ('Safety.Gear == "X"', 15, "no value label 'X' (labels: D, N, P, R)"),
        ('Safety.Gear < "P"', 12, "text can only be compared with == or !="),
        ('"P" + 1 > 0', 0, "text is only allowed"),
        ("(Vehicle.Speed > 1) + 1 > 0", 1, "'+' needs a number, got a condition"),
        ("(Vehicle.Speed > 1) == (Safety.AEB > 0)", 1, "'==' needs a number, got a condition"),
        ('Safety.Gear == "P" and "x"', 23, "text is only allowed"),
    ],
)
def test_semantic_errors_have_positions(text, position, fragment):
    error = error_of(text)
    assert fragment in error.problem
    assert error.position == position


def test_names_resolve_by_vss_path_or_message_signal():
    by_vss = compiled("Vehicle.Speed > 1")
    by_key = compiled("Wheels.Speed > 1")
    assert [s.key for s in by_vss.sources["Vehicle.Speed"]] == ["Wheels.Speed"]
    assert [s.key for s in by_key.sources["Wheels.Speed"]] == ["Wheels.Speed"]
    assert by_vss.is_condition
    assert not compiled("Safety.AEB").is_condition  # a flag: non-zero is true


def test_one_vss_path_fed_by_two_messages():
    specs = make_specs()
    twin = specs["Wheels.Speed"]
    specs["Other.Speed"] = replace(twin, key="Other.Speed", message="Other")
    expression = compile_expression("Vehicle.Speed > 1", SignalIndex(specs))
    assert sorted(s.key for s in expression.sources["Vehicle.Speed"]) == ["Other.Speed", "Wheels.Speed"]


# -- evaluation ------------------------------------------------------------------------


def evaluate(text: str, values: dict[str, float], now: float = 0.0):
    expression = compiled(text)
    history = expression.new_history()
    for key, value in values.items():
        history.update(key, now, value)
    return expression.evaluate(history, now), expression.test(history, now)


@pytest.mark.parametrize(
    ("text", "values", "value", "holds"),
    [
        ("Vehicle.Speed > 10", {"Vehicle.Speed": 10.5}, True, True),
        ("Vehicle.Speed > 10", {"Vehicle.Speed": 10.0}, False, False),
        ("Vehicle.Speed >= 10 and Vehicle.Speed <= 10", {"Vehicle.Speed": 10}, True, True),
        ("Vehicle.Speed != 3", {"Vehicle.Speed": 3}, False, False),
        ("Vehicle.Speed * 2 + 1 == 7", {"Vehicle.Speed": 3}, True, True),
        ("(Vehicle.Speed - 1) / 2", {"Vehicle.Speed": 7}, 3.0, True),
        ("-Vehicle.Speed", {"Vehicle.Speed": 7}, -7, True),
        ("Vehicle.Speed - Vehicle.Speed", {"Vehicle.Speed": 7}, 0, False),
        ("abs(Vehicle.Acceleration.Longitudinal) > 5", {"Vehicle.Acceleration.Longitudinal": -6}, True, True),
        ("min(Vehicle.Speed, 4, 9)", {"Vehicle.Speed": 5}, 4, True),
        ("max(Vehicle.Speed, 4, 9)", {"Vehicle.Speed": 50}, 50, True),
        ("not Vehicle.Speed > 1", {"Vehicle.Speed": 0}, True, True),
        ("Safety.AEB", {"Safety.AEB": 1}, 1, True),
        ("Safety.AEB", {"Safety.AEB": 0}, 0, False),
        ('Safety.Gear == "D"', {"Safety.Gear": 3}, True, True),
        ('"D" != Safety.Gear', {"Safety.Gear": 3}, False, False),
        ("0x10 == 16", {}, True, True),
    ],
)
def test_values(text, values, value, holds):
    assert evaluate(text, values) == (value, holds)


@pytest.mark.parametrize(
    ("text", "values", "value"),
    [
        # never seen -> unknown; unknown never holds
        ("Vehicle.Speed > 1", {}, None),
        ("not Vehicle.Speed > 1", {}, None),
        ("Vehicle.Speed / 0 > 1", {"Vehicle.Speed": 5}, None),
        ("Vehicle.Speed / (Safety.AEB - 1) > 1", {"Vehicle.Speed": 5, "Safety.AEB": 1}, None),
        ("min(Vehicle.Speed, Safety.AEB)", {"Vehicle.Speed": 5}, None),
        ("abs(Vehicle.Speed)", {}, None),
        # three-valued logic
        ("Vehicle.Speed > 1 or Safety.AEB == 1", {"Safety.AEB": 1}, True),
        ("Vehicle.Speed > 1 or Safety.AEB == 1", {"Safety.AEB": 0}, None),
        ("Vehicle.Speed > 1 and Safety.AEB == 1", {"Safety.AEB": 0}, False),
        ("Vehicle.Speed > 1 and Safety.AEB == 1", {"Safety.AEB": 1}, None),
        ("Vehicle.Speed > 1", {"Vehicle.Speed": float("nan")}, None),
    ],
)
def test_unknown_values_never_hold(text, values, value):
    result, holds = evaluate(text, values)
    assert result is value
    assert holds is (value is True)


def test_prev_is_the_sample_before_the_latest():
    expression = compiled("Vehicle.Speed - prev(Vehicle.Speed)")
    history = expression.new_history()
    history.update("Vehicle.Speed", 0.0, 10)
    assert expression.evaluate(history, 0.0) is None
    history.update("Vehicle.Speed", 0.1, 14)
    assert expression.evaluate(history, 0.1) == 4
    history.update("Vehicle.Speed", 0.2, 11)
    assert expression.evaluate(history, 0.2) == -3


def test_prev_with_labels():
    expression = compiled('prev(Safety.Gear) == "P" and Safety.Gear == "D"')
    history = expression.new_history()
    history.update("Safety.Gear", 0.0, 0)
    history.update("Safety.Gear", 0.1, 3)
    assert expression.test(history, 0.1)


def test_change_uses_the_value_exactly_one_window_earlier():
    expression = compiled("change(Vehicle.Speed, 250ms)")
    assert expression.windows == {"Vehicle.Speed": 0.25}
    history = expression.new_history()
    samples = [(0.0, 50), (0.125, 48), (0.25, 45), (0.375, 40), (0.5, 30)]
    results = []
    for t, v in samples:
        history.update("Vehicle.Speed", t, v)
        results.append(expression.evaluate(history, t))
    # At 0.125 nothing is 250 ms old yet; at 0.25 the 0.0 sample is exactly 250 ms old.
    assert results == [None, None, 45 - 50, 40 - 48, 30 - 45]
    # Evaluated later than the last sample (on another signal's frame): held values.
    assert expression.evaluate(history, 0.6) == 30 - 45  # value at 0.35 is the 0.25 sample
    assert expression.evaluate(history, 0.75) == 0  # value at 0.5 is 30


def test_history_keeps_only_what_the_window_needs():
    history = SignalHistory({"S": 1.0})
    for step in range(100):
        history.update("S", step * 0.1, step)
    # newest sample at or before 9.9 - 1.0 = 8.9, plus everything after it
    assert len(history._recent["S"]) == 11
    assert history.value_at("S", 8.95) == 89
    history.reset()
    assert history.value_at("S", 9.0) is None and history.current == {}


def test_hard_brake_condition_from_the_issue():
    expression = compiled("change(Vehicle.Speed, 125ms) <= -8 or Safety.AEB == 1")
    history = expression.new_history()
    results = []
    for t, speed in [(0.0, 60.0), (0.0625, 58.0), (0.125, 52.5), (0.1875, 49.5), (0.25, 48.0)]:
        history.update("Vehicle.Speed", t, speed)
        results.append((expression.evaluate(history, t), expression.test(history, t)))
    # AEB never seen: "false or unknown" is unknown, "true or unknown" is true.
    # -7.5 within 125 ms at 0.125 is not enough; -8.5 at 0.1875 is; -4.5 at 0.25 is not.
    assert results == [(None, False), (None, False), (None, False), (True, True), (None, False)]
    history.update("Safety.AEB", 0.25, 1)  # keyed by the name as written
    assert expression.evaluate(history, 0.25) is True
