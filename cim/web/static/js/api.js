// The route's HTTP API (same origin: the route serves this page): CIM's envelope
// {code, message, reqNo, dataBody}, code a string; business errors come with HTTP 200.

export const SUCCESS = "9000";
export const OFF_LINE = "7000";
export const REPEAT_LOGIN = "5000";

export class RouteError extends Error {
  constructor(path, code, message) {
    super(`${path}: ${code} ${message}`);
    this.path = path;
    this.code = code;
  }
}

// msgIds are 64-bit: past 2^53 a JS number loses digits, so they are kept as the text of the
// JSON (where the browser gives the reviver its source, as Chromium does).
function exactIds(key, value, context) {
  return key === "msgId" && context?.source !== undefined ? context.source : value;
}

// POST body to path; the dataBody of an answer whose code is in accept, else RouteError.
export async function post(path, body, token = "", accept = [SUCCESS]) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  let response, text, answer;
  try {
    response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
    text = await response.text();
  } catch (err) {
    throw new RouteError(path, "network", String(err));
  }
  try {
    answer = JSON.parse(text, exactIds);
  } catch {
    throw new RouteError(path, `HTTP ${response.status}`, text.slice(0, 200)); // not the route's envelope
  }
  if (!accept.includes(answer.code)) throw new RouteError(path, answer.code, answer.message);
  return answer.dataBody;
}

// A registered user's id: /registerAccount answers a taken name's id when its password matches
// (and under --auth none, always), so one call both registers a new name and signs an old one in.
export async function signIn(userName, password) {
  const data = await post("/registerAccount", { userName, password });
  return data.userId;
}

export const UNAUTHORIZED = "4001";

// A route login of this device: {token, wsUrl, ...}; RouteError 5000 while the server still
// holds the previous connection of this device (the caller retries). With the token of an
// earlier login (a reconnect) the token proves the user, not the password: the route hashes
// nothing, and hands the same token back; RouteError 4001 once it expired.
export async function login(userId, userName, password, deviceId, token = "") {
  if (token) return post("/login", { userId, userName, deviceId }, token);
  return post("/login", { userId, userName, password, deviceId });
}
