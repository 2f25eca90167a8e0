// A small tidings chat client for Node 18+ (mqtt.js 5): log in by phone, chat with one peer over
// MQTT, catch up from history. How to run it, and its settings: ../README.md. The contract it
// follows: the repository's README.md (HTTP) and topics.md (MQTT).
import { randomUUID } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { createInterface } from "node:readline";
import mqtt from "mqtt";

const API = process.env.CHAT_API ?? "http://127.0.0.1:8080";
const BROKER = process.env.CHAT_MQTT ?? "mqtt://127.0.0.1:1883";
const { CHAT_PHONE: PHONE, CHAT_PEER: PEER_PHONE, CHAT_STATE: STATE_FILE } = process.env;
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

// One JSON request; throws on an error status (with the error body, and the status in .status).
async function http(method, path, body, token) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const answer = await fetch(API + path, { method, headers, body: body && JSON.stringify(body) });
  const text = await answer.text();
  if (answer.ok) return text ? JSON.parse(text) : null;
  const error = new Error(`${method} ${path}: ${answer.status} ${text}`);
  throw Object.assign(error, { status: answer.status });
}

// What this device keeps: its client id (one per device), its refresh token, and the last seq of
// the conversation it has shown (it has seen everything up to it: history fills any gap).
const state = { clientId: `js-${randomUUID()}`, refreshToken: null, lastSeq: null };
if (STATE_FILE && existsSync(STATE_FILE)) {
  Object.assign(state, JSON.parse(readFileSync(STATE_FILE, "utf8")));
}
const save = () => STATE_FILE && writeFileSync(STATE_FILE, JSON.stringify(state));
let auth, refreshTimer, client; // the latest verify/refresh answer; its refresh; the connection

// Keeps new tokens (the old refresh token is dead from now on) and refreshes well before expiry.
function use(tokens) {
  auth = tokens;
  state.refreshToken = tokens.refresh_token;
  save();
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, tokens.expires_in * 800);
}

// New tokens, then a new MQTT connection with the new access token as its password.
async function refresh() {
  try {
    use(await http("POST", "/v1/auth/refresh", { refresh_token: state.refreshToken }));
  } catch (e) { // the server is unreachable: try again soon (a 401: log in again)
    console.log("refresh failed:", e.message);
    refreshTimer = setTimeout(refresh, 5000);
    return;
  }
  if (!client) return; // not connected yet: it will connect with the new token
  console.log("token refreshed; reconnecting");
  client.options.password = auth.access_token;
  client.reconnect(); // closes the connection and opens a new one
}

// 1. Log in: with the refresh token kept from a previous run, else with a code sent by SMS.
if (state.refreshToken) {
  use(await http("POST", "/v1/auth/refresh", { refresh_token: state.refreshToken }));
} else {
  let code = process.env.CHAT_CODE;
  if (!code) {
    await http("POST", "/v1/auth/otp", { phone: PHONE });
    process.stdout.write("code: ");
    code = (await lines.next()).value;
  }
  use(await http("POST", "/v1/auth/verify", { phone: PHONE, code: code.trim() }));
}
const me = auth.user_id;
console.log("logged in as", me);

// 2. Find the peer by phone number (no account yet: 404, so wait for them to join).
let peer;
while (!peer) {
  try {
    const lookup = `/v1/users/lookup?phone=${encodeURIComponent(PEER_PHONE)}`;
    peer = (await http("GET", lookup, null, auth.access_token)).user_id;
  } catch (e) {
    if (e.status !== 404) throw e;
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}
console.log("peer", PEER_PHONE, "is", peer);

// 3. MQTT: username = user id, password = access token. clean: false: the server keeps events
//    for this device while it is briefly away (history covers anything longer).
client = mqtt.connect(BROKER, {
  clientId: state.clientId, username: me, password: auth.access_token, clean: false,
  resubscribe: false, // we subscribe on every connect ourselves, then catch up
});
const pending = new Map(); // client_msg_id -> command: sends whose event has not come yet
const read = { fromPeer: 0, sent: 0 }; // the peer's newest message shown; the read marker we sent
const publish = (command) =>
  client.publish(`users/${me}/outbox`, JSON.stringify(command), { qos: 1 });

// Shows a message (in seq order, once) and remembers its seq as seen.
function show(m) {
  state.lastSeq = m.seq;
  if (m.from === me) pending.delete(m.client_msg_id); // our send is stored: the acknowledgement
  else read.fromPeer = m.seq;
  console.log(`[${m.seq}] ${m.from === me ? "me" : "peer"}: ${m.body}`);
  save();
}

// Moves our read marker (the peer sees a read receipt): one command, not one per message.
function markRead() {
  if (read.fromPeer <= read.sent) return;
  read.sent = read.fromPeer;
  publish({ type: "read", peer, seq: read.sent });
}

// Shows the history after the last seq seen (a new device: the newest page).
async function catchUp() {
  for (;;) {
    const last = state.lastSeq;
    const query = last !== null ? `after=${last}&limit=200` : "limit=50";
    const path = `/v1/conversations/${peer}/messages?${query}`;
    const page = await http("GET", path, null, auth.access_token);
    for (const m of page.messages) if (last === null || m.seq > last) show(m);
    if (last === null || !page.has_more) break; // older pages: before=, when the user scrolls
  }
  state.lastSeq ??= 0;
  markRead();
}

async function onEvent(event) { // an app keeps a last seq per conversation; here, just one
  if (event.type === "message" && [event.from, event.to].includes(peer)) {
    const last = state.lastSeq;
    if (last !== null && event.seq <= last) return; // already shown (a redelivery): dedupe by seq
    if (last === null || event.seq > last + 1) return catchUp(); // a gap: history has it all
    show(event);
    markRead();
  } else if (event.type === "read" && event.by === peer) {
    console.log("read: peer has read up to", event.seq);
  } else if (event.type === "error") { // a real app retries rate_limited after retry_after
    console.log(`error ${event.code}: ${event.message} (${event.client_msg_id})`);
    pending.delete(event.client_msg_id);
  }
}

// Inbox events and catch-ups run one at a time, in order, as the callbacks of one thread would.
let queue = Promise.resolve();
const serially = (work) =>
  (queue = queue.then(work).catch((e) => console.log("error:", e.message)));
client.on("connect", () => serially(async () => {
  await client.subscribeAsync(`users/${me}/inbox`, { qos: 1 });
  await catchUp(); // what we missed while away
  console.log("online");
}));
client.on("message", (topic, payload) => serially(() => onEvent(JSON.parse(payload))));
client.on("error", (e) => { // 5, "not authorized": the token expired or was revoked
  console.log("mqtt:", e.message);
  if (e.code === 5) refresh();
});

// 4. Every line typed is a message, with a new client_msg_id, pending until its event comes back
//    (an app resends a pending command, unchanged, after a few seconds: topics.md, "How to send
//    safely").
for await (const line of lines) {
  if (!line.trim()) continue;
  const command = { type: "send", to: peer, body: line, client_msg_id: randomUUID() };
  pending.set(command.client_msg_id, command);
  publish(command);
}
for (let i = 0; pending.size && i < 100; i++) { // quit once what we sent is stored
  await new Promise((resolve) => setTimeout(resolve, 100));
}
clearTimeout(refreshTimer);
await client.endAsync();
