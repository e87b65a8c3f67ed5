// One user's session with a cim-server over WebSocket, kept up across connections: the same
// delivery rules as the Python SDK (cim/client/delivery.py). One binary WebSocket message is one
// protobuf Request (to the server) or Response (from it), no length prefix.
//
// Receiving: after every login SYNC{ackSeq: lastSeq}; a push at or below lastSeq is a duplicate
// (dropped), one past a gap is dropped and asks SYNC again (one outstanding at a time); lastSeq is
// acked (DELIVERY_ACK) 100 ms after it moves and kept in localStorage. Sending: each message gets a
// clientMsgId (microseconds since the epoch, increasing) and stays in the outbox until its
// SEND_RECEIPT; after a reconnect the unanswered ones are written again, same ids, in order, so the
// server's dedup window keeps a message from arriving twice.

const Cmd = {
  LOGIN_REQUEST: 0, MESSAGE: 1, PING: 2, OFFLINE: 3, SEND_RECEIPT: 16, ERROR: 17, DELIVERY_ACK: 18, SYNC: 19,
  LOGIN_ANSWER: 20, MESSAGE_STATUS: 21, MARK_READ: 22,
};
const STATUS_NAMES = { 1: "DELIVERED", 2: "READ" };
const ACK_DELAY_MS = 100;
const DEFAULT_HEARTBEAT_S = 15;
const READ_TIMEOUT_INTERVALS = 3; // heartbeat intervals of silence after which the connection counts as lost
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 10000;

// The wire schema, parsed from the cim.proto the route serves next to this page (protobuf.js
// full build; long.js makes 64-bit ids exact).
export async function loadSchema() {
  protobuf.util.Long = Long;
  protobuf.configure();
  const root = await protobuf.load("cim.proto");
  return { Request: root.lookupType("cim.Request"), Response: root.lookupType("cim.Response") };
}

let lastClientMsgId = 0;
function newClientMsgId() {
  lastClientMsgId = Math.max(Date.now() * 1000, lastClientMsgId + 1);
  return String(lastClientMsgId);
}

export class Session {
  // login(): a fresh route login, {token, wsUrl}; handlers: onMessage(push), onReceipt(receipt),
  // onStatus({msgIds, receiverId, status}), onState(text, connected), onFatal(text).
  constructor({ schema, userId, userName, deviceId, login, handlers }) {
    this.schema = schema;
    this.userId = String(userId);
    this.userName = userName;
    this.deviceId = deviceId;
    this.login = login;
    this.handlers = handlers;
    this.seqKey = `cim.lastSeq.${this.userId}.${deviceId}`;
    const stored = localStorage.getItem(this.seqKey);
    this.lastSeq = stored === null ? null : Number(stored); // null: resume at the device's cursor (LOGIN_ANSWER.ackedSeq)
    this.outbox = new Map(); // clientMsgId -> {text, receiverId, groupId}, in the order sent
    this.ws = null;
    this.loggedIn = false;
    this.syncing = false;
    this.lowestDropped = null;
    this.ackTimer = null;
    this.acked = this.lastSeq ?? 0;
    this.heartbeatTimer = null;
    this.lastRead = this.lastWrite = 0;
    this.attempt = 0;
    this.stopped = false;
  }

  start() {
    this.connect();
  }

  async connect() {
    if (this.stopped) return;
    this.handlers.onState(this.attempt ? "reconnecting" : "connecting", false);
    let grant;
    try {
      grant = await this.login();
    } catch (err) {
      this.retry(`login: ${err.message}`);
      return;
    }
    if (!grant.wsUrl) {
      this.handlers.onFatal("the server has no WebSocket port (its /login answer has no wsUrl)");
      return;
    }
    const ws = new WebSocket(grant.wsUrl);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      this.lastRead = Date.now();
      this.write({ cmd: Cmd.LOGIN_REQUEST, requestId: this.userId, reqMsg: this.userName, token: grant.token || "",
                   deviceId: this.deviceId, wantsReceipts: true });
    };
    ws.onmessage = (event) => {
      if (ws !== this.ws) return;
      this.lastRead = Date.now();
      this.receive(this.schema.Response.decode(new Uint8Array(event.data)));
    };
    ws.onclose = () => {
      if (ws !== this.ws) return;
      this.disconnected();
      this.retry("connection lost");
    };
  }

  retry(why) {
    if (this.stopped) return;
    const delay = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.attempt) * (0.5 + Math.random() / 2);
    this.attempt += 1;
    this.handlers.onState(`${why}; reconnecting in ${(delay / 1000).toFixed(1)} s`, false);
    setTimeout(() => this.connect(), delay);
  }

  disconnected() {
    this.loggedIn = false;
    this.syncing = false;
    this.ws = null;
    clearInterval(this.heartbeatTimer);
  }

  write(fields) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    const { Request } = this.schema;
    this.ws.send(Request.encode(Request.fromObject({ requestId: this.userId, ...fields })).finish());
    this.lastWrite = Date.now();
  }

  receive(message) {
    const r = this.schema.Response.toObject(message, { longs: String, enums: Number, defaults: true });
    switch (r.cmd) {
      case Cmd.LOGIN_ANSWER: this.loggedInAt(r); break;
      case Cmd.MESSAGE: this.pushed(r); break;
      case Cmd.SYNC: this.syncDone(r); break;
      case Cmd.SEND_RECEIPT:
        if (r.seq !== "0") this.ownCopy(r, this.outbox.get(r.clientMsgId));
        if (this.outbox.delete(r.clientMsgId) || r.clientMsgId === "0") {
          this.handlers.onReceipt({ clientMsgId: r.clientMsgId, msgId: r.msgId, code: String(r.code), text: r.resMsg });
        }
        break;
      case Cmd.MESSAGE_STATUS:
        this.handlers.onStatus({ msgIds: r.msgIds, receiverId: r.responseId, status: STATUS_NAMES[r.status] });
        break;
      case Cmd.ERROR:
        if (!this.loggedIn) {
          // A refused login (a token the server does not take): a new route login may fix it.
          this.ws.close();
          this.handlers.onState(`login refused: ${r.code} ${r.resMsg}`, false);
        }
        break;
      case Cmd.OFFLINE:
        if (r.code === 9000) this.stop(`logged out: ${r.resMsg}`);
        break;
      default: // PING's pong and commands this client does not know
    }
  }

  loggedInAt(answer) {
    this.loggedIn = true;
    this.attempt = 0;
    const latest = Number(answer.seq);
    if (this.lastSeq === null) this.lastSeq = this.acked = Number(answer.ackedSeq);
    if (latest < this.lastSeq) { // the server lost its inboxes: start again from 0
      this.lastSeq = this.acked = 0;
      localStorage.setItem(this.seqKey, "0");
    }
    const interval = Math.min(DEFAULT_HEARTBEAT_S, (answer.heartbeatSeconds || 2 * DEFAULT_HEARTBEAT_S) / 2) * 1000;
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = setInterval(() => this.heartbeat(interval), interval / 4);
    this.handlers.onState("online", true);
    this.sync();
    if (this.acked > 0) this.write({ cmd: Cmd.DELIVERY_ACK, ackSeq: String(this.acked) });
    for (const [clientMsgId, pending] of this.outbox) this.writeMessage(clientMsgId, pending);
  }

  heartbeat(interval) {
    const now = Date.now();
    if (now - this.lastRead >= READ_TIMEOUT_INTERVALS * interval) {
      this.ws?.close(); // onclose reconnects
    } else if (now - this.lastWrite >= interval) {
      this.write({ cmd: Cmd.PING, reqMsg: "ping" });
    }
  }

  sync() {
    this.syncing = true;
    this.lowestDropped = null;
    this.write({ cmd: Cmd.SYNC, ackSeq: String(this.lastSeq) });
  }

  pushed(r) {
    const properties = r.properties || {};
    this.deliver(Number(r.seq), {
      seq: Number(r.seq), msgId: r.msgId, clientMsgId: r.clientMsgId, text: r.resMsg, timestamp: Number(r.timestamp),
      senderId: properties.sendUserId || r.responseId, senderName: properties.sendUserName || "",
      receiverId: properties.receiveUserId || "", toUserId: r.toUserId === "0" ? "" : r.toUserId,
      groupId: r.groupId, notice: r.notice,
    });
  }

  // A receipt that stands for my copy of the send on this connection (the server pushes none here):
  // the copy, made from the send, goes through the seq checks as its push would.
  ownCopy(r, pending) {
    if (!pending) { // gone meanwhile, and its text with it: a sync brings the copy from the inbox
      if (!this.syncing && this.loggedIn) this.sync();
      return;
    }
    this.deliver(Number(r.seq), {
      seq: Number(r.seq), msgId: r.msgId, clientMsgId: r.clientMsgId, text: pending.text, timestamp: Number(r.timestamp),
      senderId: this.userId, senderName: this.userName, receiverId: this.userId,
      toUserId: pending.receiverId === null ? "" : String(pending.receiverId), groupId: pending.groupId, notice: false,
    });
  }

  // A message of my inbox by its seq (0: from a server without inboxes, as it comes): once, in order, to the app.
  deliver(seq, message) {
    if (seq !== 0) {
      if (seq <= this.lastSeq) return; // a duplicate
      if (seq > this.lastSeq + 1) { // past a gap: a sync refills it
        if (this.lowestDropped === null || seq < this.lowestDropped) this.lowestDropped = seq;
        if (!this.syncing && this.loggedIn) this.sync();
        return;
      }
      this.lastSeq = seq;
      this.ackSoon();
    }
    this.handlers.onMessage(message);
  }

  syncDone(r) {
    this.syncing = false;
    const latest = Number(r.seq);
    if (r.truncated && this.lastSeq < latest) { // retention dropped some: skip to the first one kept
      this.lastSeq = (this.lowestDropped ?? latest + 1) - 1;
      this.ackSoon();
    }
    if (this.lastSeq < latest) this.sync();
  }

  ackSoon() {
    if (this.ackTimer !== null) return;
    this.ackTimer = setTimeout(() => {
      this.ackTimer = null;
      if (this.lastSeq === this.acked) return;
      this.acked = this.lastSeq;
      localStorage.setItem(this.seqKey, String(this.acked));
      if (this.loggedIn) this.write({ cmd: Cmd.DELIVERY_ACK, ackSeq: String(this.acked) });
    }, ACK_DELAY_MS);
  }

  // Send a message (receiverId: private, groupId: to that named group); its clientMsgId.
  send(text, { receiverId = null, groupId = "" }) {
    const clientMsgId = newClientMsgId();
    const pending = { text, receiverId, groupId };
    this.outbox.set(clientMsgId, pending);
    if (this.loggedIn) this.writeMessage(clientMsgId, pending);
    return clientMsgId;
  }

  writeMessage(clientMsgId, { text, receiverId, groupId }) {
    const properties = receiverId === null ? {} : { receiveUserId: String(receiverId) };
    this.write({ cmd: Cmd.MESSAGE, reqMsg: text, clientMsgId, groupId, properties });
  }

  // The user has read their inbox up to seq (cumulative): the senders who asked get READ.
  markRead(seq) {
    if (this.loggedIn) this.write({ cmd: Cmd.MARK_READ, ackSeq: String(seq) });
  }

  stop(why) {
    this.stopped = true;
    const ws = this.ws;
    this.disconnected();
    ws?.close();
    this.handlers.onFatal(why);
  }
}
