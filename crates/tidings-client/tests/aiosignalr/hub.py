"""A small hub on the aiosignalr server (PyPI), for the Rust client's interop tests.

Run with the Python of the virtual environment made by scripts/aiosignalr-venv.sh.
Prints "listening on http://127.0.0.1:PORT" once it accepts connections and runs
until killed. Besides the hub at /hub it answers POST /redirect/negotiate with a
negotiate redirect to /hub carrying an access token.
"""

import asyncio

from aiohttp import web
from aiosignalr import HubException
from aiosignalr.server import Hub, IncomingStream, ServerOptions, SignalRServer

REDIRECT_TOKEN = "redirected-token"


class TestHub(Hub):
    # aiosignalr finds methods by their lower-cased name, so "Echo" from the
    # client reaches Echo here. A method reports a result only when it has a
    # return annotation.

    async def Echo(self, value) -> object:
        return value

    async def Add(self, a, b) -> int:
        return a + b

    async def Nothing(self):
        pass

    async def Throw(self, message):
        raise ValueError(message)

    async def ThrowHubException(self, message):
        raise HubException(message)

    async def Delay(self, ms, value) -> object:
        await asyncio.sleep(ms / 1000)
        return value

    async def Counter(self, count, delay_ms):
        for i in range(count):
            if i:
                await asyncio.sleep(delay_ms / 1000)
            yield i

    async def Sum(self, numbers: IncomingStream) -> float:
        total = 0
        async for n in numbers:
            total += n
        return total

    async def SumAndReport(self, numbers: IncomingStream):
        """Like Sum, but the total comes back as a client method call."""
        total = 0
        async for n in numbers:
            total += n
        await self.clients.caller.send("Total", total)

    async def Notify(self, message):
        await self.clients.caller.send("Notified", message)

    async def AskCaller(self, question) -> object:
        return await self.clients.caller.invoke("Ask", question)

    async def AskAndReport(self, question):
        """A client result whose answer comes back as a client method call."""
        try:
            answer = await self.clients.caller.invoke("Ask", question)
            await self.clients.caller.send("Answer", answer, None)
        except Exception as error:  # noqa: BLE001 - reported to the client
            await self.clients.caller.send("Answer", None, str(error))

    async def GetConnectionId(self) -> str:
        return self.context.connection_id

    async def GetHeader(self, name) -> object:
        return self.context.http_headers.get(name.lower())

    async def GetQuery(self, name) -> object:
        return self.context.query_string.get(name)

    async def JoinGroup(self, group):
        await self.groups.add(group)

    async def SendToGroup(self, group, message):
        await self.clients.group(group).send("GroupMessage", message)


async def main() -> None:
    server = SignalRServer(
        TestHub,
        options=ServerOptions(allow_stateful_reconnects=True, keep_alive_interval=2.0),
    )
    app = server.create_application(path="/hub")

    async def redirect(request: web.Request) -> web.Response:
        return web.json_response({"url": f"http://{request.host}/hub", "accessToken": REDIRECT_TOKEN})

    app.router.add_post("/redirect/negotiate", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
