"""Candidate pruning gives exactly what evaluating every filter gives."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from switchd.filter_index import TopicIndex, required_equality
from switchd.filters import CompiledFilter, compile_filter

PATHS = [
    'data["a"]',
    'data["b"]',
    'data["body"]["customer"]',
    'data["body"]["x"]',
    'data["body"][0]',
]
VALUES = ["1", "1.0", "True", "0", "None", '"c1"', '"c2"', "-0.0"]
JSON_VALUES = st.sampled_from([1, 1.0, True, False, 0, -0.0, "c1", "c2", None, [1], {"k": 1}, "1"])


@dataclass
class Sub:
    name: str
    compiled: CompiledFilter

    @property
    def order(self) -> tuple[float, str]:
        return (0.0, self.name)


def clause() -> st.SearchStrategy[str]:
    path, value = st.sampled_from(PATHS), st.sampled_from(VALUES)
    return st.one_of(
        st.builds(lambda p, v: f"{p} == {v}", path, value),
        st.builds(lambda p, v: f"{v} == {p}", path, value),
        st.builds(lambda p, v: f"{p} != {v}", path, value),
        st.builds(lambda p: f"{p} > 0", path),
        st.builds(lambda p, v, q, w: f"({p} == {v} or {q} == {w})", path, value, path, value),
        st.just("True"),
    )


FILTERS = st.lists(clause(), min_size=1, max_size=3).map(" and ".join)
PAYLOADS = st.fixed_dictionaries(
    {},
    optional={
        "a": JSON_VALUES,
        "b": JSON_VALUES,
        "body": st.one_of(
            st.fixed_dictionaries({}, optional={"customer": JSON_VALUES, "x": JSON_VALUES}),
            st.lists(JSON_VALUES, max_size=2),
            JSON_VALUES,
        ),
    },
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(FILTERS, min_size=1, max_size=12), st.lists(PAYLOADS, min_size=1, max_size=5))
def test_index_matches_exactly_like_evaluating_every_filter(filters, payloads):
    subscribers = [Sub(f"s{i:02}", compile_filter(f)) for i, f in enumerate(filters)]
    index = TopicIndex(subscribers)
    for payload in payloads:
        every = [s.name for s in subscribers if s.compiled.matches(payload)]
        assert [s.name for s in index.matching(payload)] == every


def test_ten_thousand_customers_evaluate_one_candidate():
    subscribers = [
        Sub(f"s{i:04}", compile_filter(f'data["body"]["customer"] == "c{i}"'))
        for i in range(10_000)
    ]
    index = TopicIndex(subscribers)
    assert [s.name for s in index.candidates({"body": {"customer": "c42"}})] == ["s0042"]
    assert index.candidates({"body": {}}) == []
    assert [s.name for s in index.matching({"body": {"customer": "c9999"}})] == ["s9999"]


def test_required_equality_extraction():
    def required(expression: str):
        return required_equality(compile_filter(expression))

    assert required('data["a"]["b"] == 3 and data["c"] > 1') == (("a", "b"), 3)
    assert required('"x" == data["k"]') == (("k",), "x")
    assert required('data["c"] > 1 and (data["d"] == 2 and data["e"] == 3)') == (("d",), 2)
    assert required('data["a"] == 1 or data["b"] == 2') is None
    assert required('data["a"] == [1]') is None
    assert required("data[True] == 1") is None
    assert required("True") is None
    assert required('data.get("a") == 1') is None


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.lists(FILTERS, min_size=1, max_size=12),
    st.lists(st.tuples(st.booleans(), st.integers(0, 11)), max_size=40),
    st.lists(PAYLOADS, min_size=1, max_size=4),
)
def test_index_changed_one_by_one_is_the_index_built_at_once(filters, steps, payloads):
    subscribers = [Sub(f"s{i:02}", compile_filter(f)) for i, f in enumerate(filters)]
    index, filed = TopicIndex(), {}
    for add, number in steps:
        subscriber = subscribers[number % len(subscribers)]
        if add and subscriber.name not in filed:
            index.add(subscriber)
            filed[subscriber.name] = subscriber
        elif not add and subscriber.name in filed:
            index.remove(subscriber)
            del filed[subscriber.name]
    remaining = [filed[name] for name in sorted(filed)]
    assert len(index) == len(remaining)
    assert index.members() == remaining
    for payload in payloads:
        every = [s.name for s in remaining if s.compiled.matches(payload)]
        assert [s.name for s in index.matching(payload)] == every


def test_folded_constants_are_indexable():
    required = required_equality(compile_filter('data["a"][-1] == -2 ** 3 and data["b"] > 0'))
    assert required == (("a", -1), -8)
    index = TopicIndex([Sub("s", compile_filter('data["a"][-1] == -2 ** 3'))])
    assert [s.name for s in index.candidates({"a": [0, -8]})] == ["s"]
    assert index.candidates({"a": [-8, 0]}) == []
