// The web client's UI: sign in, people (online or talked to), named groups, one conversation on
// screen with its history scrolling back, unread counts, delivered/read marks of what I sent.
import { OFF_LINE, REPEAT_LOGIN, RouteError, SUCCESS, UNAUTHORIZED, login, post, signIn } from "./api.js";
import { Session, loadSchema } from "./session.js";

const $ = (id) => document.getElementById(id);
const ONLINE_POLL_MS = 3000;
const HISTORY_PAGE = 30;
const RECENT_SCAN = 200; // the /history limit: the most one page lists
const MARKS = { pending: "…", sent: "✓", stored: "✓ stored", DELIVERED: "✓✓", READ: "✓✓ read", FAILED: "failed" };
const RANK = { pending: 0, sent: 1, stored: 1, DELIVERED: 2, READ: 3 };

const state = {
  me: null, // {userId, userName, password, token}
  session: null,
  users: new Map(), // userId -> userName, everyone this page has seen
  online: new Set(),
  conversations: new Map(), // "u:ID" / "g:ID" -> conversation
  current: null,
  historyAvailable: true, // until the route answers that it has no /history
  readMark: 0, // the seq last sent in MARK_READ
};

function deviceId() {
  let id = localStorage.getItem("cim.deviceId");
  if (!id) {
    id = `web-${crypto.getRandomValues(new Uint32Array(2)).join("")}`;
    localStorage.setItem("cim.deviceId", id);
  }
  return id;
}

// A route call acting for me; an expired token (4001) gets a new one once.
async function call(path, body, accept = [SUCCESS]) {
  const { userId, userName, password } = state.me;
  const acting = { userId: Number(userId), ...body };
  try {
    return await post(path, acting, state.me.token, accept);
  } catch (err) {
    if (!(err instanceof RouteError) || err.code !== UNAUTHORIZED) throw err;
    state.me.token = (await post("/token", { userId: Number(userId), userName, password })).token;
    return post(path, acting, state.me.token, accept);
  }
}

function conversation(key, title) {
  let conv = state.conversations.get(key);
  if (!conv) {
    const [kind, id] = [key[0], key.slice(2)];
    conv = { key, kind, id, title: title || id, messages: new Map(), unread: 0, minUnreadSeq: null, nextSeq: 0,
             hasMore: true, historyLoaded: false, loading: false };
    state.conversations.set(key, conv);
  } else if (title) {
    conv.title = title;
  }
  return conv;
}

function userTitle(userId) {
  return state.users.get(String(userId)) || `user ${userId}`;
}

// -- messages ------------------------------------------------------------------

// A message into its conversation, once: by its seq in my inbox (live, synced and history pushes
// alike), or, my own send coming back as the copy my other devices also get, by msgId or clientMsgId.
function same(kept, message) {
  if (kept.seq && message.seq) return kept.seq === message.seq;
  if (!message.mine || !kept.mine) return false;
  return (Boolean(message.msgId) && message.msgId !== "0" && kept.msgId === message.msgId)
    || (Boolean(message.clientMsgId) && message.clientMsgId !== "0" && kept.clientMsgId === message.clientMsgId);
}

function keep(conv, message) {
  for (const [id, kept] of conv.messages) {
    if (same(kept, message)) {
      const clientMsgId = kept.clientMsgId || message.clientMsgId;
      Object.assign(kept, { ...message, clientMsgId, mark: kept.mark === "pending" ? "sent" : kept.mark, key: id });
      return false;
    }
  }
  message.key = message.seq ? `s${message.seq}` : `c${message.clientMsgId}`;
  conv.messages.set(message.key, message);
  return true;
}

// My own private message (my copy, from this page or another device of mine) is in the
// conversation with the user it went to (toUserId); one to everyone (no toUserId) has none here.
function conversationOf(push) {
  if (push.groupId) return conversation(`g:${push.groupId}`);
  const mine = push.senderId === state.me.userId;
  if (mine && !push.toUserId) return null;
  return conversation(`u:${mine ? push.toUserId : push.senderId}`);
}

function onPush(push) {
  if (push.senderName) state.users.set(push.senderId, push.senderName);
  const conv = conversationOf(push);
  if (!conv) return;
  const mine = push.senderId === state.me.userId && !push.notice;
  const message = { ...push, mine, mark: mine ? "sent" : null };
  const added = keep(conv, message);
  if (push.notice) refreshGroups();
  if (added && !mine && !push.notice && push.seq) {
    if (conv !== state.current || document.hidden) {
      conv.unread += 1;
      conv.minUnreadSeq = Math.min(conv.minUnreadSeq ?? push.seq, push.seq);
    }
  }
  if (conv === state.current) renderMessages({ stick: true });
  renderLists();
  markRead();
}

function onReceipt(receipt) {
  for (const conv of state.conversations.values()) {
    const message = conv.messages.get(`c${receipt.clientMsgId}`);
    if (!message) continue;
    if (receipt.code === SUCCESS || receipt.code === OFF_LINE) {
      message.msgId = receipt.msgId;
      upgrade(message, receipt.code === OFF_LINE ? "stored" : "sent");
    } else {
      message.mark = "FAILED";
      message.error = `${receipt.code} ${receipt.text}`;
    }
    if (conv === state.current) renderMessages({});
  }
}

function upgrade(message, mark) {
  if (message.mark === null || (RANK[mark] ?? 0) > (RANK[message.mark] ?? 0)) message.mark = mark;
}

function onStatus({ msgIds, status }) {
  const ids = new Set(msgIds);
  for (const conv of state.conversations.values()) {
    for (const message of conv.messages.values()) if (message.mine && ids.has(message.msgId)) upgrade(message, status);
  }
  renderMessages({});
}

// MARK_READ is cumulative over the whole inbox: mark up to just below the oldest unread message of
// any conversation not on screen, so nothing is reported read that was not shown.
function markRead() {
  if (!state.session || !state.current || document.hidden) return;
  state.current.unread = 0;
  state.current.minUnreadSeq = null;
  let upTo = state.session.lastSeq ?? 0;
  for (const conv of state.conversations.values()) if (conv.minUnreadSeq !== null) upTo = Math.min(upTo, conv.minUnreadSeq - 1);
  if (upTo > state.readMark) {
    state.readMark = upTo;
    state.session.markRead(upTo);
  }
  renderLists();
}

async function loadOlder(conv) {
  if (!state.historyAvailable || !conv.hasMore) return;
  if (conv.loading) return;
  conv.loading = true;
  try {
    // A page's scan is bounded, so one may come back empty with more to come: go on to a few messages.
    for (let pages = 0, found = 0; pages < 5 && found === 0 && conv.hasMore; pages++) found = await loadPage(conv);
  } finally {
    conv.loading = false;
  }
  conv.historyLoaded = true;
  if (conv === state.current) renderMessages({ keepBottom: true });
}

async function loadPage(conv) {
  const body = { limit: HISTORY_PAGE, ...(conv.kind === "g" ? { groupId: conv.id } : { peerId: Number(conv.id) }) };
  if (conv.nextSeq) body.beforeSeq = conv.nextSeq;
  let page;
  try {
    page = await call("/history", body);
  } catch (err) {
    if (err instanceof RouteError && err.code === "3000" && /no such path/.test(err.message)) {
      state.historyAvailable = false; // an older route: the conversation shows what came since sign-in
      return 0;
    }
    throw err;
  }
  for (const m of page.messages) {
    const senderId = String(m.sendUserId);
    if (m.sendUserName) state.users.set(senderId, m.sendUserName);
    const mine = senderId === state.me.userId && !m.notice;
    keep(conv, { seq: m.seq, msgId: String(m.msgId), clientMsgId: "", text: m.text,
                 timestamp: m.timestamp, senderId, senderName: m.sendUserName || "", groupId: m.groupId || "",
                 notice: Boolean(m.notice), mine, mark: mine ? "sent" : null });
  }
  conv.hasMore = Boolean(page.hasMore);
  conv.nextSeq = page.nextSeq;
  return page.messages.length;
}

// -- lists -----------------------------------------------------------------------

async function refreshOnline() {
  try {
    const users = await post("/onlineUser", {});
    state.online = new Set(users.map((u) => String(u.userId)));
    for (const u of users) state.users.set(String(u.userId), u.userName);
    renderLists();
  } catch { /* the next poll tries again */ }
}

async function refreshGroups() {
  const groups = await call("/group/list", {});
  for (const g of groups) conversation(`g:${g.groupId}`, g.name).memberCount = g.memberCount;
  renderLists();
}

// The conversations of my kept inbox, newest first, so a reloaded page (which syncs nothing it
// already had) lists them too; each loads its own messages when opened.
async function refreshRecent() {
  if (!state.historyAvailable) return;
  try {
    const page = await call("/history", { limit: RECENT_SCAN });
    for (const m of page.messages.reverse()) {
      const senderId = String(m.sendUserId);
      if (m.sendUserName) state.users.set(senderId, m.sendUserName);
      const mine = senderId === state.me.userId;
      if (m.groupId || !mine || m.toUserId) conversation(m.groupId ? `g:${m.groupId}` : `u:${mine ? String(m.toUserId) : senderId}`);
    }
    renderLists();
  } catch { /* the lists fill from what arrives */ }
}

function item(conv, online) {
  const li = document.createElement("li");
  li.className = `conv${conv === state.current ? " active" : ""}${online ? " online" : ""}`;
  li.dataset.key = conv.key;
  li.innerHTML = '<span class="dot"></span><span class="title"></span><span class="unread"></span>';
  li.querySelector(".title").textContent = conv.title;
  li.querySelector(".unread").textContent = conv.unread ? String(conv.unread) : "";
  li.onclick = () => open(conv.key);
  return li;
}

function renderLists() {
  for (const user of state.online) if (user !== state.me.userId) conversation(`u:${user}`);
  const people = [], groups = [];
  for (const conv of state.conversations.values()) {
    if (conv.kind === "u") {
      conv.title = userTitle(conv.id);
      people.push(item(conv, state.online.has(conv.id)));
    } else {
      groups.push(item(conv, false));
    }
  }
  $("people").replaceChildren(...people);
  $("groups").replaceChildren(...groups);
}

// -- the conversation on screen -------------------------------------------------------

function renderMessages({ stick = false, keepBottom = false }) {
  const conv = state.current;
  if (!conv) return;
  const box = $("messages");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  const fromBottom = box.scrollHeight - box.scrollTop;
  const ordered = [...conv.messages.values()].sort((a, b) => (a.timestamp - b.timestamp) || (a.seq - b.seq));
  $("message-list").replaceChildren(...ordered.map(messageItem));
  $("older").hidden = !(state.historyAvailable && conv.hasMore);
  if ((stick && atBottom) || !conv.scrolled) {
    box.scrollTop = box.scrollHeight;
    conv.scrolled = true;
  } else if (keepBottom) {
    box.scrollTop = box.scrollHeight - fromBottom; // older messages prepended: keep the view where it was
  }
}

function messageItem(m) {
  const li = document.createElement("li");
  li.className = `msg${m.mine ? " mine" : ""}${m.notice ? " notice" : ""}`;
  li.dataset.seq = String(m.seq || "");
  li.dataset.msgId = m.msgId || "";
  if (!m.mine && !m.notice && state.current.kind === "g") {
    const from = li.appendChild(document.createElement("div"));
    from.className = "from";
    from.textContent = m.senderName || userTitle(m.senderId);
  }
  const text = li.appendChild(document.createElement("div"));
  text.className = "text";
  text.textContent = m.text;
  const meta = li.appendChild(document.createElement("div"));
  meta.className = "meta";
  meta.textContent = new Date(m.timestamp).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (m.mine) {
    const mark = meta.appendChild(document.createElement("span"));
    mark.className = "mark";
    mark.dataset.status = m.mark;
    mark.textContent = ` ${MARKS[m.mark] || ""}`;
    if (m.error) mark.title = m.error;
  }
  return li;
}

async function open(key) {
  const conv = state.conversations.get(key);
  state.current = conv;
  $("app").classList.add("in-chat");
  $("chat-title").textContent = conv.title;
  $("members-toggle").hidden = conv.kind !== "g";
  $("members").hidden = true;
  $("composer-text").disabled = $("send").disabled = false;
  $("composer-text").focus();
  renderMessages({});
  renderLists();
  markRead();
  if (!conv.historyLoaded) await loadOlder(conv);
}

async function toggleMembers() {
  const list = $("members");
  if (!list.hidden) {
    list.hidden = true;
    return;
  }
  const info = await call("/group/members", { groupId: state.current.id });
  list.replaceChildren(...info.members.map((u) => {
    state.users.set(String(u.userId), u.userName);
    const li = document.createElement("li");
    li.textContent = `${u.userName}${u.userId === info.ownerId ? " (owner)" : ""}`;
    return li;
  }));
  list.hidden = false;
}

function send(event) {
  event.preventDefault();
  const input = $("composer-text");
  const text = input.value.trim();
  const conv = state.current;
  if (!text || !conv) return;
  input.value = "";
  const target = conv.kind === "g" ? { groupId: conv.id } : { receiverId: conv.id };
  const clientMsgId = state.session.send(text, target);
  keep(conv, { seq: 0, msgId: "", clientMsgId, text, timestamp: Date.now(), senderId: state.me.userId, mine: true,
               notice: false, mark: "pending" });
  renderMessages({ stick: true });
}

async function createGroup(event) {
  event.preventDefault();
  $("group-error").textContent = "";
  const byName = new Map([...state.users].map(([id, name]) => [name, Number(id)]));
  const members = [];
  for (const word of $("group-members").value.split(",").map((w) => w.trim()).filter(Boolean)) {
    const id = /^\d+$/.test(word) ? Number(word) : byName.get(word);
    if (id === undefined) {
      $("group-error").textContent = `${word}: no such user seen yet (use their id)`;
      return;
    }
    members.push(id);
  }
  try {
    const name = $("group-name").value.trim();
    const { groupId } = await call("/group/create", { name, members });
    $("group-form").reset();
    conversation(`g:${groupId}`, name);
    await refreshGroups();
    open(`g:${groupId}`);
  } catch (err) {
    $("group-error").textContent = err.message;
  }
}

// -- sign in ---------------------------------------------------------------------

async function start(event) {
  event.preventDefault();
  $("signin-error").textContent = "";
  $("signin-button").disabled = true;
  const userName = $("signin-name").value.trim();
  const password = $("signin-password").value;
  try {
    const userId = String(await signIn(userName, password));
    state.me = { userId, userName, password, token: "" };
    const schema = await loadSchema();
    const device = deviceId();
    const routeLogin = async () => {
      try {
        let grant;
        try {
          grant = await login(Number(userId), userName, password, device, state.me.token);
        } catch (err) {
          if (!state.me.token || err.code !== UNAUTHORIZED) throw err;
          grant = await login(Number(userId), userName, password, device); // the token expired
        }
        state.me.token = grant.token || "";
        return grant;
      } catch (err) {
        if (err.code === REPEAT_LOGIN) throw new Error("this device's last connection is still open; retrying");
        throw err;
      }
    };
    state.session = new Session({
      schema, userId, userName, deviceId: device, login: routeLogin,
      handlers: {
        onMessage: onPush, onReceipt, onStatus,
        onState: (text, connected) => {
          $("connection").textContent = text;
          $("connection").dataset.connected = String(connected);
          if (connected) refreshGroups().catch(() => {});
        },
        onFatal: (text) => { $("connection").textContent = text; $("connection").dataset.connected = "false"; },
      },
    });
    $("signin").hidden = true;
    $("app").hidden = false;
    $("me-name").textContent = userName;
    $("me-id").textContent = `#${userId}`;
    state.session.start();
    refreshOnline();
    refreshRecent();
    setInterval(refreshOnline, ONLINE_POLL_MS);
  } catch (err) {
    $("signin-error").textContent = err.message;
  } finally {
    $("signin-button").disabled = false;
  }
}

$("signin").addEventListener("submit", start);
$("composer").addEventListener("submit", send);
$("group-form").addEventListener("submit", createGroup);
$("older").addEventListener("click", () => loadOlder(state.current));
$("messages").addEventListener("scroll", () => {
  if ($("messages").scrollTop === 0 && state.current?.historyLoaded) loadOlder(state.current);
});
$("members-toggle").addEventListener("click", toggleMembers);
$("back").addEventListener("click", () => {
  $("app").classList.remove("in-chat");
  state.current = null;
  renderLists();
});
document.addEventListener("visibilitychange", markRead);
