"""Drives the test hub with pysignalr (asyncio; WebSockets only, JSON or
MessagePack): connect, invoke, receive, error, stream, stop."""

import asyncio

from pysignalr.client import SignalRClient
from pysignalr.protocol.json import JSONProtocol
from pysignalr.protocol.messagepack import MessagepackProtocol

from common import MISSING_METHOD, STREAM_FAILED, THROW_HUB_EXCEPTION, TIMEOUT, arguments, check, step


class Connection:
    """A started pysignalr client with awaitable invocations."""

    def __init__(self, url, protocol):
        self.client = SignalRClient(
            f"{url}/hubs/test",
            protocol=MessagepackProtocol() if protocol == "messagepack" else JSONProtocol(),
        )
        self.opened = asyncio.Event()
        self.client.on_open(self._opened)
        # pysignalr reports failed invocations to this callback as well as to
        # the invocation's own one; without it, a failure raises inside the
        # client's receive loop.
        self.client.on_error(self._ignore)
        self.task = None

    async def _opened(self):
        self.opened.set()

    async def _ignore(self, _message):
        pass

    async def start(self):
        self.task = asyncio.create_task(self.client.run())
        await asyncio.wait_for(self.opened.wait(), TIMEOUT)

    async def invoke(self, method, *args):
        """The completion of `method(args)`: its `result` or its `error`."""
        done = asyncio.get_running_loop().create_future()

        async def completed(message):
            if not done.done():
                done.set_result(message)

        await self.client.send(method, list(args), on_invocation=completed)
        return await asyncio.wait_for(done, TIMEOUT)

    async def stop(self):
        # pysignalr has no stop(): ending its run task closes the WebSocket.
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass


async def main():
    args = arguments()
    observer = Connection(args.url, args.protocol)
    await observer.start()
    departures = asyncio.Queue()

    async def departed(arguments):
        await departures.put(arguments)

    observer.client.on("ClientDisconnected", departed)
    check((await observer.invoke("Observe")).error, None, "Observe")

    c = Connection(args.url, args.protocol)
    await c.start()
    step("connect")

    check((await c.invoke("GetTransport")).result, "WebSockets", "GetTransport")
    check((await c.invoke("Add", 2, 40)).result, 42, "Add")
    value = {"nested": {"list": [1, "two", None], "s": "é€😀"}, "flag": True}
    check((await c.invoke("Echo", value)).result, value, "Echo")
    step("invoke")

    received = asyncio.get_running_loop().create_future()

    async def direct(arguments):
        if not received.done():
            received.set_result(arguments)

    c.client.on("DirectMessage", direct)
    await c.client.send("SendToCaller", ["hello"])
    check(await asyncio.wait_for(received, TIMEOUT), ["hello"], "DirectMessage")
    step("receive")

    check((await c.invoke("ThrowHubException", "for you")).error, THROW_HUB_EXCEPTION, "ThrowHubException")
    check((await c.invoke("Missing")).error, MISSING_METHOD, "Missing")
    check((await c.invoke("Echo", "alive")).result, "alive", "Echo after errors")
    step("error")

    items = []
    finished = asyncio.get_running_loop().create_future()

    async def item(value):
        items.append(value)

    async def complete(message):
        finished.set_result(("complete", message.error))

    async def failed(message):
        finished.set_result(("error", message.error))

    await c.client.stream("Counter", [3, 0], item, complete, failed)
    check(await asyncio.wait_for(finished, TIMEOUT), ("complete", None), "Counter")
    check(items, [0, 1, 2], "Counter items")
    items.clear()
    finished = asyncio.get_running_loop().create_future()
    await c.client.stream("CounterThenFail", [2, "bad"], item, complete, failed)
    check(await asyncio.wait_for(finished, TIMEOUT), ("error", STREAM_FAILED), "CounterThenFail")
    check(items, [0, 1], "CounterThenFail items")
    step("stream")

    connection_id = (await c.invoke("GetConnectionId")).result
    await c.stop()
    # Observers hear of every connection of the hub: this one's departure
    # is the one with its id.
    departed_id = None
    while departed_id != connection_id:
        departed_id, error = await asyncio.wait_for(departures.get(), TIMEOUT)
    await observer.stop()
    step("stop")
    # A stop() is a clean departure, which the hub sees without an error.
    check(error, None, "the error of the departure")
    step("clean-departure")


asyncio.run(main())
