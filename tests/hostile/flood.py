"""A raw paho-mqtt publisher in its own process: ``python -m tests.hostile.flood PORT TOPIC RATE SECONDS KID``.

Publishes, paced at RATE/s for SECONDS, msgpack requests carrying the (public) key id KID and a random
signature: what anyone who can publish to a command topic can send. QoS 1 with a wide in-flight window,
so the broker holds every one of them for the agent. Prints ``sent <n> in <s> s`` at the end.
"""

from __future__ import annotations

import os
import sys
import time
import uuid

import msgpack
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def main() -> int:
    port, topic, rate, seconds, kid = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"flood-{uuid.uuid4().hex[:8]}",
                    protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    t0 = time.monotonic()
    now = time.time()
    n = 0
    name = topic.rsplit("/", 1)[1]
    while (elapsed := time.monotonic() - t0) < seconds:
        due = int(elapsed * rate)
        while n < due:
            req = {"id": uuid.uuid4().hex, "name": name, "args": {}, "issued_at": now, "expires_at": now + 60,
                   "kid": kid, "sig": os.urandom(64)}
            c.publish(topic, msgpack.packb(req, use_bin_type=True), qos=1)
            n += 1
        time.sleep(0.002)
    print(f"sent {n} in {time.monotonic() - t0:.2f} s", flush=True)
    c.loop_stop()
    c.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
