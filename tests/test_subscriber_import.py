"""POST /subscribers/import: all or nothing, identical entries skipped, ids returned; and
filters that can never evaluate refused at save (DESIGN §12)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Running, Sink, StartSwitchd
from tests.test_cli import cli


def entry(n: int, **fields: Any) -> dict[str, Any]:
    return {"topic": "orders", "target_url": f"http://127.0.0.1:9/{n}", **fields}


async def imported(app: Running, entries: list[Any]) -> tuple[int, Any]:
    return await app.call("POST", "/subscribers/import", json=entries, headers=app.admin)


async def test_import_creates_all_returns_ids_and_reaches_the_publish_path(
    start_switchd: StartSwitchd, sink: Sink
):
    app = await start_switchd()
    entries = [
        {"topic": "orders", "target_url": sink.url(f"/c{n}"),
         "filter_expression": f'data["body"]["customer"] == "c{n}"'}
        for n in range(50)
    ] + [{"topic": "orders", "target_url": sink.url("/signed"), "secret": True}]  # fmt: skip
    status, answer = await imported(app, entries)
    assert status == 201, answer
    assert answer["created"] == 51 and answer["skipped"] == 0 and len(answer["ids"]) == 51
    listed = {s["id"]: s for s in (await app.call("GET", "/subscribers", headers=app.admin))[1][
        "subscribers"]}  # fmt: skip
    assert [listed[i]["target_url"] for i in answer["ids"]] == [e["target_url"] for e in entries]
    [signed] = answer["ids"][-1:]
    assert list(answer["secrets"]) == [signed] and answer["secrets"][signed].startswith("whsec_")
    status, published = await app.publish("orders", {"body": {"customer": "c7"}})
    assert status == 202 and published["subscribers"] == [answer["ids"][7], signed]
    received = await sink.wait_for(2)
    assert sorted(r.path for r in received) == ["/c7", "/signed"]
    assert app.service.registry.full_reloads == 1  # applied incrementally


async def test_import_skips_entries_identical_to_existing_subscribers(
    start_switchd: StartSwitchd,
):
    app = await start_switchd()
    existing = await app.add_subscriber(**entry(1, filter_expression='data["x"] == 1'))
    disabled = await app.add_subscriber(**entry(2), enabled=False)
    entries = [entry(1, filter_expression='data["x"] == 1'), entry(3), entry(2), entry(3)]
    status, answer = await imported(app, entries)
    assert status == 201, answer
    assert answer["created"] == 2 and answer["skipped"] == 2
    assert answer["ids"][0] == existing["id"] and answer["ids"][2] == disabled["id"]
    assert len(set(answer["ids"])) == 4  # identical entries within one list are both new
    again = await imported(app, entries)  # each entry now has its identical one (the oldest)
    ids = [*answer["ids"][:3], answer["ids"][1]]
    assert again == (200, {"ids": ids, "created": 0, "skipped": 4, "secrets": {}})
    assert await app.count("subscribers") == 4


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ({"topic": "orders"}, "subscribers[2]: 'target_url'"),
        ("not an object", "subscribers[2]: not a JSON object"),
        (entry(9, filter_expression="9**9**9"), "subscribers[2]: 'filter_expression'"),
        (entry(9, colour="red"), "subscribers[2]: unknown field(s): colour"),
    ],
)
async def test_import_is_all_or_nothing_and_names_the_bad_entry(
    start_switchd: StartSwitchd, bad: Any, needle: str
):
    app = await start_switchd()
    status, answer = await imported(app, [entry(0), entry(1), bad, entry(3)])
    assert status == 400, answer
    assert needle in answer["error"]["message"]
    assert await app.count("subscribers") == 0
    assert app.service.registry.by_id == {}


async def test_cli_import_reports_the_same_index(start_switchd: StartSwitchd, tmp_path):
    source = tmp_path / "subs.json"
    source.write_text('[{"topic": "t", "target_url": "http://h/x"}, {"topic": "t"}]')
    failed = await cli("subscribers", "import", str(source), db=tmp_path / "cli.db")
    assert failed.code == 2 and "subscribers[1]: 'target_url'" in failed.err


# --- filters refused at save -------------------------------------------------------------

NEVER_EVALUATE = [
    ('"{0}".format(data)', "attribute 'format' is not allowed"),
    ("data['body'].pop('x') or True", "attribute 'pop' is not allowed"),
    ("str.upper(data['s'])", "'str' has no attributes"),
    ("data['n'] > 9**9**9", "'9**9**9' can never be evaluated"),
    ('data["s"] == "a" * 10**10', "'\"a\" * 10**10' can never be evaluated"),
    ("'abc'.get(data['k'])", "'.get' access not allowed"),
]


@pytest.mark.parametrize(("expression", "needle"), NEVER_EVALUATE)
async def test_filters_that_can_never_evaluate_are_refused_and_nothing_is_stored(
    start_switchd: StartSwitchd, expression: str, needle: str
):
    app = await start_switchd()
    fields = entry(1, filter_expression=expression)
    status, answer = await app.call("POST", "/subscribers", json=fields, headers=app.admin)
    assert status == 400 and answer["error"]["code"] == "invalid_filter", answer
    assert needle in answer["error"]["message"]
    assert await app.count("subscribers") == 0 and app.service.registry.by_id == {}

    plain = await app.add_subscriber(**entry(2))
    path = f"/subscribers/{plain['id']}"
    patch = {"filter_expression": expression}
    status, answer = await app.call("PATCH", path, json=patch, headers=app.admin)
    assert status == 400 and needle in answer["error"]["message"]
    shown = (await app.call("GET", path, headers=app.admin))[1]
    del shown["endpoint"]  # GET shows the endpoint's state too (endpoint isolation)
    assert shown == {k: v for k, v in plain.items() if k != "secret"}  # unchanged

    check = {"expression": expression, "data": {}}
    status, verdict = await app.call("POST", "/filters/check", json=check, headers=app.admin)
    assert status == 200 and verdict["valid"] is False and needle in verdict["error"]
    checked = await cli("check-filter", expression, "--data", "{}")
    assert checked.code == 2 and needle in checked.err
