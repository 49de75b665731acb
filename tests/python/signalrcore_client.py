"""Drives the test hub with signalrcore (threads; WebSockets, Server-Sent
Events or Long Polling, JSON): connect, invoke, receive, error, stream, stop."""

import logging
import os
import queue
import threading
import uuid

from signalrcore.hub.handlers import StreamHandler
from signalrcore.hub_connection_builder import HubConnectionBuilder
from signalrcore.messages.stream_invocation_message import StreamInvocationMessage
from signalrcore.transport.long_polling.long_polling_client import LongPollingBaseClient
from signalrcore.types import HttpTransportType

from common import MISSING_METHOD, STREAM_FAILED, THROW_HUB_EXCEPTION, TIMEOUT, arguments, check, step

TRANSPORTS = {
    "WebSockets": HttpTransportType.web_sockets,
    "ServerSentEvents": HttpTransportType.server_sent_events,
    "LongPolling": HttpTransportType.long_polling,
}


def _all_complete_records(self, frame):
    """Every complete record buffered so far, or None.

    signalrcore 1.0's Long Polling client hands on only the first record of
    a poll response and keeps the rest until a later poll returns (its
    `_append`), so a response carrying two messages delivers the second one
    only after the next poll ends, up to the server's poll timeout later.
    ASP.NET Core batches queued messages into one poll response just as
    tidings does; the client's bug is worked around here by handing on all
    complete records at once (its protocol splits them).
    """
    self._buffer += frame
    end = self._buffer.rfind(self._byte_separator)
    if end < 0:
        return None
    complete, self._buffer = self._buffer[: end + 1], self._buffer[end + 1 :]
    return complete


LongPollingBaseClient._append = _all_complete_records


def wait(q, what):
    try:
        return q.get(timeout=TIMEOUT)
    except queue.Empty:
        raise SystemExit(f"{what}: nothing within {TIMEOUT} s") from None


class Connection:
    """A started signalrcore connection with blocking invocations."""

    def __init__(self, url, transport):
        self.hub = (
            HubConnectionBuilder()
            .with_url(f"{url}/hubs/test", options={"transport": TRANSPORTS[transport]})
            .configure_logging(logging.DEBUG if os.environ.get("PYCLIENT_DEBUG") else logging.CRITICAL)
            .build()
        )
        self.opened = threading.Event()
        self.closed = threading.Event()
        self.hub.on_open(self.opened.set)
        self.hub.on_close(self.closed.set)
        # signalrcore hands a failed invocation's completion to the
        # connection's error callback only, never to the invocation's own;
        # errors are routed back to their invocation by id here.
        self.failures = {}
        self.hub.on_error(self._failed)

    def _failed(self, message):
        waiting = self.failures.pop(getattr(message, "invocation_id", None), None)
        if waiting is not None:
            waiting.put(("error", message.error))

    def start(self):
        self.hub.start()
        if not self.opened.wait(TIMEOUT):
            raise SystemExit("the connection did not open")

    def invoke(self, method, *args):
        """`("result", value)` or `("error", text)` of `method(args)`."""
        answer = queue.Queue()
        # The id is chosen here so that a failure arriving at once finds its
        # invocation.
        invocation_id = str(uuid.uuid4())
        self.failures[invocation_id] = answer
        self.hub.invoke(method, list(args), on_invocation=lambda m: answer.put(("result", m.result)), invocation_id=invocation_id)
        return wait(answer, method)

    def stream(self, method, params):
        """`(outcome, items)` of the server-to-client stream `method(params)`."""
        items = []
        finished = queue.Queue()
        # signalrcore's stream() sends the invocation before it returns the
        # handler to subscribe to, so items arriving at once are dropped (its
        # bug). The same steps in the safe order: subscribe, then send.
        invocation_id = str(uuid.uuid4())
        handler = StreamHandler(method, invocation_id)
        handler.subscribe(
            {
                "next": items.append,
                "complete": lambda m: finished.put(("complete", m.error)),
                "error": lambda m: finished.put(("error", m.error)),
            }
        )
        # A failed stream's completion, too, goes to the connection's error
        # callback (see `_failed`), not to the stream's.
        self.failures[invocation_id] = finished
        self.hub.stream_handlers[invocation_id].append(handler)
        self.hub.transport.send(StreamInvocationMessage(invocation_id, method, params, headers=self.hub.headers))
        return wait(finished, method), items

    def stop(self):
        self.hub.stop()
        if not self.closed.wait(TIMEOUT):
            raise SystemExit("the connection did not close")


def main():
    args = arguments()
    observer = Connection(args.url, args.transport)
    observer.start()
    departures = queue.Queue()
    observer.hub.on("ClientDisconnected", departures.put)
    check(observer.invoke("Observe"), ("result", None), "Observe")

    c = Connection(args.url, args.transport)
    c.start()
    step("connect")

    check(c.invoke("GetTransport"), ("result", args.transport), "GetTransport")
    check(c.invoke("Add", 2, 40), ("result", 42), "Add")
    value = {"nested": {"list": [1, "two", None], "s": "é€😀"}, "flag": True}
    check(c.invoke("Echo", value), ("result", value), "Echo")
    step("invoke")

    received = queue.Queue()
    c.hub.on("DirectMessage", received.put)
    c.hub.send("SendToCaller", ["hello"])
    check(wait(received, "DirectMessage"), ["hello"], "DirectMessage")
    step("receive")

    check(c.invoke("ThrowHubException", "for you"), ("error", THROW_HUB_EXCEPTION), "ThrowHubException")
    check(c.invoke("Missing"), ("error", MISSING_METHOD), "Missing")
    check(c.invoke("Echo", "alive"), ("result", "alive"), "Echo after errors")
    step("error")

    check(c.stream("Counter", [3, 0]), (("complete", None), [0, 1, 2]), "Counter")
    check(c.stream("CounterThenFail", [2, "bad"]), (("error", STREAM_FAILED), [0, 1]), "CounterThenFail")
    step("stream")

    _, connection_id = c.invoke("GetConnectionId")
    c.stop()
    # Observers hear of every connection of the hub: this one's departure
    # is the one with its id.
    departed_id = None
    while departed_id != connection_id:
        departed_id, error = wait(departures, "ClientDisconnected")
    observer.stop()
    step("stop")
    # A stop() is a clean departure, which the hub sees without an error.
    check(error, None, "the error of the departure")
    step("clean-departure")


main()
