"""What the Python client programs share: their command line, the step
report the Node test reads, and the texts ASP.NET Core answers with."""

import argparse
import sys

THROW_HUB_EXCEPTION = (
    "An unexpected error occurred invoking 'ThrowHubException' on the server. "
    "HubException: for you"
)
MISSING_METHOD = (
    "Failed to invoke 'Missing' due to an error on the server. "
    "HubException: Method does not exist."
)
STREAM_FAILED = "An error occurred on the server while streaming results. HubException: bad"
TIMEOUT = 10.0


def arguments():
    """`URL TRANSPORT PROTOCOL`: the server, and what the client should use."""
    parser = argparse.ArgumentParser()
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:5000")
    parser.add_argument("transport", choices=["WebSockets", "ServerSentEvents", "LongPolling"])
    parser.add_argument("protocol", choices=["json", "messagepack"])
    return parser.parse_args()


def step(name):
    """Reports a passed step; the Node test expects every step, in order."""
    print(f"ok {name}", flush=True)


def check(actual, expected, what):
    if actual != expected:
        sys.exit(f"{what}: expected {expected!r}, got {actual!r}")
