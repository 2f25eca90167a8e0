#!/usr/bin/env python3
"""A small tidings chat client in Python (paho-mqtt 2): log in by phone, chat with one peer over
MQTT, catch up from history. How to run it, and its settings: ../README.md. The contract it
follows: the repository's README.md (HTTP) and topics.md (MQTT)."""
import json, os, sys, threading, time, uuid
import urllib.error, urllib.parse, urllib.request
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

API = os.environ.get("CHAT_API", "http://127.0.0.1:8080")
BROKER = urllib.parse.urlsplit(os.environ.get("CHAT_MQTT", "mqtt://127.0.0.1:1883"))
PHONE, PEER_PHONE = os.environ["CHAT_PHONE"], os.environ["CHAT_PEER"]
STATE_FILE = os.environ.get("CHAT_STATE")
sys.stdout.reconfigure(line_buffering=True)

def http(method, path, body=None, token=None):
    """One JSON request; raises urllib.error.HTTPError on an error status."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(API + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(request) as answer:
        text = answer.read()
    return json.loads(text) if text else None

# What this device keeps: its client id (one per device), its refresh token, and the last seq of
# the conversation it has shown (it has seen everything up to it: history fills any gap).
state = {"client_id": "py-" + uuid.uuid4().hex[:12], "refresh_token": None, "last_seq": None}
if STATE_FILE and os.path.exists(STATE_FILE):
    state.update(json.load(open(STATE_FILE)))
auth = {}  # the latest verify/refresh answer, and when to refresh it

def save():
    if STATE_FILE:
        json.dump(state, open(STATE_FILE, "w"))

def use(tokens):
    """Keeps new tokens: the old refresh token is dead from now on. Refresh well before expiry."""
    auth.update(tokens, refresh_at=time.time() + tokens["expires_in"] * 0.8)
    state["refresh_token"] = tokens["refresh_token"]
    save()

# 1. Log in: with the refresh token kept from a previous run, else with a code sent by SMS.
if state["refresh_token"]:
    use(http("POST", "/v1/auth/refresh", {"refresh_token": state["refresh_token"]}))
else:
    code = os.environ.get("CHAT_CODE")
    if not code:
        http("POST", "/v1/auth/otp", {"phone": PHONE})
        code = input("code: ")
    use(http("POST", "/v1/auth/verify", {"phone": PHONE, "code": code.strip()}))
me = auth["user_id"]
print("logged in as", me)

# 2. Find the peer by phone number (no account yet: 404, so wait for them to join).
query = urllib.parse.urlencode({"phone": PEER_PHONE})
while True:
    try:
        peer = http("GET", "/v1/users/lookup?" + query, token=auth["access_token"])["user_id"]
        break
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise
        time.sleep(2)
print("peer", PEER_PHONE, "is", peer)

# 3. MQTT 5.0 (3.1.1 works the same: the JavaScript example uses it): username = user id,
#    password = access token. Clean Start 0 and a Session Expiry Interval: the server keeps
#    events for this device while it is briefly away (history covers anything longer).
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, state["client_id"], protocol=mqtt.MQTTv5)
pending = {}  # client_msg_id -> command: sends whose event has not come yet
read = {"from_peer": 0, "sent": 0}  # the peer's newest message shown; the read marker we sent

def publish(command):
    client.publish(f"users/{me}/outbox", json.dumps(command), qos=1)

def show(m):
    """Shows a message (in seq order, once) and remembers its seq as seen."""
    state["last_seq"] = m["seq"]
    if m["from"] == me:
        pending.pop(m.get("client_msg_id"), None)  # our send is stored: the acknowledgement
    else:
        read["from_peer"] = m["seq"]
    print(f"[{m['seq']}] {'me' if m['from'] == me else 'peer'}: {m['body']}")
    save()

def mark_read():
    """Moves our read marker (the peer sees a read receipt): one command, not one per message."""
    if read["from_peer"] > read["sent"]:
        read["sent"] = read["from_peer"]
        publish({"type": "read", "peer": peer, "seq": read["sent"]})

def catch_up():
    """Shows the history after the last seq seen (a new device: the newest page)."""
    while True:
        last = state["last_seq"]
        query = f"after={last}&limit=200" if last is not None else "limit=50"
        page = http("GET", f"/v1/conversations/{peer}/messages?{query}", token=auth["access_token"])
        for m in page["messages"]:
            if last is None or m["seq"] > last:
                show(m)
        if last is None or not page["has_more"]:  # older pages: before=, when the user scrolls
            break
    state["last_seq"] = state["last_seq"] or 0
    mark_read()

def on_connect(client, userdata, flags, reason, properties):
    if reason.is_failure:  # 0x87 "not authorized": the token expired or was revoked
        print("refused:", reason)
        auth["refresh_at"] = 0  # refresh now; then connect again with the new token
    else:
        client.subscribe(f"users/{me}/inbox", qos=1)

def on_subscribe(client, userdata, mid, reasons, properties):
    catch_up()  # what we missed while away
    print("online")

def on_message(client, userdata, msg):
    event = json.loads(msg.payload)  # an app keeps a last seq per conversation; here, just one
    if event["type"] == "message" and peer in (event["from"], event["to"]):
        last = state["last_seq"]
        if last is not None and event["seq"] <= last:
            return  # already shown (a redelivery after a reconnect): dedupe by seq
        if last is None or event["seq"] > last + 1:
            return catch_up()  # a gap: history has everything up to this event
        show(event)
        mark_read()
    elif event["type"] == "read" and event["by"] == peer:
        print("read: peer has read up to", event["seq"])
    elif event["type"] == "error":  # a real app retries rate_limited after retry_after
        print(f"error {event['code']}: {event['message']} ({event.get('client_msg_id')})")
        pending.pop(event.get("client_msg_id"), None)

def connect():
    client.username_pw_set(me, auth["access_token"])
    session = Properties(PacketTypes.CONNECT)
    session.SessionExpiryInterval = 3600  # kept an hour at most (the server may grant less)
    client.connect(BROKER.hostname, BROKER.port or 1883, keepalive=30, clean_start=False,
                   properties=session)
    client.loop_start()  # paho's network thread: runs the callbacks, reconnects after a drop

def keep_token_fresh():
    """Refreshes the token before it expires, then reconnects with the new one."""
    while True:
        time.sleep(0.5)
        if time.time() >= auth["refresh_at"]:
            try:
                use(http("POST", "/v1/auth/refresh", {"refresh_token": state["refresh_token"]}))
            except OSError as e:  # the server is unreachable: try again soon (a 401: log in again)
                print("refresh failed:", e)
                auth["refresh_at"] = time.time() + 5
                continue
            print("token refreshed; reconnecting")
            client.disconnect()
            client.loop_stop()
            connect()

client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
connect()
threading.Thread(target=keep_token_fresh, daemon=True).start()

# 4. Every line typed is a message, with a new client_msg_id, pending until its event comes back
#    (an app resends a pending command, unchanged, after a few seconds: topics.md, "How to send
#    safely").
for line in sys.stdin:
    if line.strip():
        command = {"type": "send", "to": peer, "body": line.rstrip("\n"),
                   "client_msg_id": str(uuid.uuid4())}
        pending[command["client_msg_id"]] = command
        publish(command)
deadline = time.time() + 10
while pending and time.time() < deadline:
    time.sleep(0.1)  # quit once what we sent is stored
client.disconnect()
client.loop_stop()
