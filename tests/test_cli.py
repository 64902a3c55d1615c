"""Every CLI command as a subprocess against a temp database (and `publish` against a live
server and sink), bad arguments included."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from tests.conftest import SECRET, Sink, StartSwitchd, clean_environ


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):
        return orjson.loads(self.out)


async def cli(*args: str, db: Path | None = None, stdin: bytes | None = None, **env: str) -> Result:
    environ = clean_environ()
    environ.update({"SWITCH_JWT_SECRET": SECRET, **env})
    if db is not None:
        environ["SWITCH_DB_NAME"] = str(db)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "switchd",
        *args,
        env=environ,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin or b""), timeout=30)
    assert process.returncode is not None
    assert b"Traceback" not in err, err.decode()
    return Result(process.returncode, out.decode(), err.decode())


def one_line_error(result: Result, code: int = 2) -> str:
    assert result.code == code, (result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    return lines[0]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "cli.db"


async def test_subscribers_lifecycle(db: Path):
    added = await cli(
        "subscribers", "add", "--topic", "orders", "--url", "http://127.0.0.1:9/o",
        "--filter", 'data["body"]["x"] == 1', "--secret", "--json", db=db,
    )  # fmt: skip
    assert added.code == 0, added.err
    subscriber = added.json()
    assert subscriber["topic"] == "orders" and subscriber["secret"].startswith("whsec_")

    listed = await cli("subscribers", "list", db=db)
    assert listed.code == 0 and subscriber["id"] in listed.out and "orders" in listed.out
    assert "whsec_" not in listed.out
    as_json = (await cli("subscribers", "list", "--topic", "orders", "--json", db=db)).json()
    assert [s["id"] for s in as_json] == [subscriber["id"]]
    assert (await cli("subscribers", "list", "--topic", "none", "--json", db=db)).json() == []

    shown = await cli("subscribers", "show", subscriber["id"], db=db)
    assert shown.code == 0 and "target_url" in shown.out and "http://127.0.0.1:9/o" in shown.out

    updated = await cli(
        "subscribers", "update", subscriber["id"], "--disable", "--url", "https://example.test/x",
        "--json", db=db,
    )  # fmt: skip
    assert updated.code == 0
    assert updated.json()["enabled"] is False
    assert updated.json()["target_url"] == "https://example.test/x"
    rotated = (
        await cli("subscribers", "update", subscriber["id"], "--rotate-secret", "--json", db=db)
    ).json()
    assert rotated["secret"] != subscriber["secret"]

    removed = await cli("subscribers", "remove", subscriber["id"], db=db)
    assert removed.code == 0 and "removed" in removed.out
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM subscribers").fetchone()[0] == 0


async def test_import_export_round_trip(db: Path, tmp_path: Path):
    seed = [
        {"topic": "a", "target_url": "http://127.0.0.1:9/a", "filter_expression": "True"},
        {"topic": "b", "target_url": "http://127.0.0.1:9/b", "filter_expression": 'data["k"] == 2'},
    ]
    source = tmp_path / "subs.json"
    source.write_bytes(orjson.dumps(seed))
    first = await cli("subscribers", "import", str(source), "--json", db=db)
    assert first.code == 0 and first.json() == {"created": 2, "skipped": 0}
    again = await cli("subscribers", "import", "-", db=db, stdin=orjson.dumps(seed))
    assert again.code == 0 and again.out.strip() == "created 0, skipped 2"

    exported = (await cli("subscribers", "export", db=db)).json()
    assert [
        {k: e[k] for k in ("topic", "target_url", "filter_expression")} for e in exported
    ] == seed
    assert all("secret" not in e for e in exported)

    bad = [*seed, {"topic": "c", "target_url": "not a url"}]
    failed = await cli("subscribers", "import", "-", db=db, stdin=orjson.dumps(bad))
    assert "subscribers[2]" in one_line_error(failed)  # the JSON index of the bad entry
    with sqlite3.connect(db) as conn:  # all or nothing
        assert conn.execute("SELECT COUNT(*) FROM subscribers").fetchone()[0] == 2


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("subscribers", "add", "--topic", "t", "--url", "ftp://x/y"), "http"),
        (
            ("subscribers", "add", "--topic", "t", "--url", "http://h/x", "--filter", "data["),
            "syntax",
        ),
        (("subscribers", "add", "--url", "http://h/x"), "--topic"),
        (("subscribers", "update", "some-id"), "nothing to change"),
        (("subscribers", "update", "x", "--enable", "--disable"), "not allowed"),
        (("subscribers", "import", "-"), "JSON"),
        (("subscribers", "frobnicate"), "invalid choice"),
        (("dead", "replay"), "choose dead letters"),
        (("dead", "purge", "1", "--all"), "choose dead letters"),
        (("dead", "list", "--limit", "0"), "--limit"),
        (("dead", "replay", "abc"), "invalid int"),
        (("token", "--author", "a", "--ttl", "soon"), "invalid duration"),
        (("token", "--author", "a", "--admin"), "SWITCH_ADMIN_JWT_SECRET is required"),
        (("token", "--author", "a", "--admin", "--topic", "t"), "admin tokens manage every"),
        (("token", "--author", "a", "--topic", ""), "--topic"),
        (("token", "--author", "a", "--topic", ".*"), "needs a prefix"),
        (("token", "--author", "a", "--topic", "t\x7f"), "control"),
        (("check-filter", "True", "--data", "[1]"), "JSON object"),
        (("publish", "t", "--header", "novalue"), "K=V"),
        (("publish", "t", "--body", "{bad"), "--body"),
        (("publish", "t", "--method", "TRACE"), "invalid choice"),
        (("nonsense",), "invalid choice"),
    ],
)
async def test_bad_usage_is_one_line_exit_2(db: Path, args, needle):
    await cli("subscribers", "import", "-", db=db, stdin=b"[]")  # the database exists
    line = one_line_error(await cli(*args, db=db))
    assert needle in line


async def test_missing_things_exit_1(db: Path, tmp_path: Path):
    missing_db = await cli("subscribers", "list", db=tmp_path / "absent.db")
    assert "no database" in one_line_error(missing_db, code=1)
    await cli("subscribers", "import", "-", db=db, stdin=b"[]")
    assert "no subscriber" in one_line_error(await cli("subscribers", "show", "nope", db=db), 1)
    assert "no subscriber" in one_line_error(await cli("subscribers", "remove", "nope", db=db), 1)
    no_secret = await cli("token", "--author", "a", SWITCH_JWT_SECRET="")
    assert "SWITCH_JWT_SECRET" in one_line_error(no_secret)
    unreachable = await cli("publish", "t", "--url", "http://127.0.0.1:9")
    assert "publish failed" in one_line_error(unreachable, code=1)


async def test_publish_reaches_the_sink_and_dead_commands(start_switchd: StartSwitchd, sink: Sink):
    app = await start_switchd()
    db = Path(app.service.settings.db_name)
    added = await cli(
        "subscribers", "add", "--topic", "cli", "--url", sink.url("/users/:user"), "--json", db=db
    )
    assert added.code == 0
    for _ in range(40):  # the running server picks up the CLI's change
        if app.service.registry.by_topic.get("cli"):
            break
        await asyncio.sleep(0.05)

    sent = await cli(
        "publish", "cli", "--body", '{"hello": "world"}', "--header", "X-One=1",
        "--query", "a=1", "--query", "a=2", "--path", "user=u 1", "--method", "put",
        "--author", "tester", "--url", app.url, "--json",
    )  # fmt: skip
    assert sent.code == 0, sent.err
    answer = sent.json()
    assert answer["matched"] == 1
    [request] = await sink.wait_for(1)
    assert request.method == "PUT" and request.path == "/users/u%201"
    assert request.query == "a=1&a=2" and request.headers["X-One"] == "1"
    assert request.json() == {"hello": "world"}
    assert request.headers["X-Switch-Author"] == "tester"

    sink.status = 400
    await cli("publish", "cli", "--body", "1", "--url", app.url)
    for _ in range(100):
        if await app.count("dead_letters"):
            break
        await asyncio.sleep(0.05)
    listed = await cli("dead", "list", "--json", db=db)
    [record] = listed.json()
    assert record["last_status"] == 400 and record["topic"] == "cli"
    table = await cli("dead", "list", "--topic", "cli", db=db)
    assert str(record["id"]) in table.out and "HTTP 400" in table.out

    sink.status = 200
    replayed = await cli("dead", "replay", str(record["id"]), "--json", db=db)
    assert replayed.json() == {"replayed": 1, "skipped": 0}
    requests = await sink.wait_for(3)
    assert requests[2].json() == 1
    bulk = await cli("dead", "replay", "--topic", "cli", db=db)
    assert bulk.out.startswith("replayed 0")  # already replayed
    purged = await cli("dead", "purge", "--all", "--json", db=db)
    assert purged.json() == {"purged": 1}
    assert await app.count("dead_letters") == 0
