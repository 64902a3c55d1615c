"""A local HTTP sink that answers 200 to everything; prints each request unless --quiet.

Used by the README's walkthrough (`make sink`) and by the benchmarks.
"""

from __future__ import annotations

import argparse

from aiohttp import web


def make_app(quiet: bool) -> web.Application:
    """An app that records nothing and answers every request with 200."""

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
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

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    print(f"sink listening on http://127.0.0.1:{args.port}", flush=True)
    web.run_app(make_app(args.quiet), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
