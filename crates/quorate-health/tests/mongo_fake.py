#!/usr/bin/env python3
"""A server speaking MongoDB's wire protocol, for quorate-health's MongoDB check test.

Debian has no MongoDB server; `python3-mockupdb` (a MongoDB wire-protocol server library) does
the talking. This answers the handshake (`hello` / `isMaster`, as a standalone server of wire
version 21) and `ping`, and nothing else. Usage: mongo_fake.py PORT. Prints "ready PORT" on
stdout once it listens on 127.0.0.1:PORT, then serves until killed.
"""
import sys
import time

from mockupdb import MockupDB

HANDSHAKE = {
    "ismaster": True,
    "isWritablePrimary": True,
    "helloOk": True,
    "minWireVersion": 0,
    "maxWireVersion": 21,
    "maxBsonObjectSize": 16 * 1024 * 1024,
    "maxMessageSizeBytes": 48 * 1000 * 1000,
    "maxWriteBatchSize": 100000,
    "logicalSessionTimeoutMinutes": 30,
    "ok": 1,
}


def main():
    port = int(sys.argv[1])
    server = MockupDB(port=port)
    # MockupDB binds "localhost", which may resolve to ::1; the test connects to 127.0.0.1.
    server._address = ("127.0.0.1", port)
    for name in ("hello", "ismaster", "isMaster"):
        server.autoresponds(name, **HANDSHAKE)
    server.autoresponds("ping", ok=1)
    server.autoresponds("endSessions", ok=1)
    server.run()
    print("ready", server.port, flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
