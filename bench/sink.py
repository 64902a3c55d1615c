"""A local HTTP sink that answers 200 to everything; prints each request unless --quiet.

Used by the README's walkthrough (`make sink`) and by the benchmarks, which read how many
requests arrived from `GET /_stats` (that path is not counted). Runs on uvloop.
"""

from __future__ import annotations

import argparse

import orjson
import uvloop
from aiohttp import web


def make_app(quiet: bool) -> web.Application:
    """An app that counts requests and answers every one with 200."""
    received = {"requests": 0}

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        received["requests"] += 1
        if not quiet:
            switch = {
                k: v
                for k, v in request.headers.items()
                if k.lower().startswith(("x-switch", "webhook"))
            }
            print(
                f"{request.method} {request.path_qs} {switch} {body.decode(errors='replace')}",
                flush=True,
            )
        return web.Response(text="ok")

    async def stats(request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(received), content_type="application/json")

    app = web.Application()
    app.router.add_get("/_stats", stats)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    print(f"sink listening on http://127.0.0.1:{args.port}", flush=True)
    web.run_app(
        make_app(args.quiet),
        host="127.0.0.1",
        port=args.port,
        print=None,
        access_log=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
