// The console's only way to the server: the same public HTTP API a script uses, with the session cookie.

export class ApiError extends Error {
  /** `fields` maps a dotted field path ("assignments.0.gpu_index") to its message (from a 422's detail). */
  constructor(status, message, fields = new Map(), body = null) {
    super(message);
    this.status = status;
    this.fields = fields;
    this.body = body;
  }
}

function fieldsOf(detail) {
  const fields = new Map();
  if (!Array.isArray(detail)) return fields;
  for (const item of detail) {
    const loc = (item.loc || []).filter((part) => part !== "body" && part !== "query");
    fields.set(loc.join("."), item.msg);
  }
  return fields;
}

function messageOf(status, body) {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) {
    return body.detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}`).join("; ");
  }
  if (body && body.error && body.error.message) return body.error.message;
  return `HTTP ${status}`;
}

async function call(method, path, {json, body, headers = {}, accept = "application/json"} = {}) {
  const init = {method, headers: {Accept: accept, ...headers}, credentials: "same-origin"};
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (body !== undefined) {
    init.body = body;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, `The gateway did not answer (${err.message}).`);
  }
  if (response.status === 401) {
    // The session ended (expired, or the admin token changed): back to the login page.
    location.replace("/");
    throw new ApiError(401, "Signed out.");
  }
  const type = response.headers.get("content-type") || "";
  const parsed = type.includes("json") ? await response.json().catch(() => null) : await response.text();
  if (!response.ok) {
    const detail = parsed && typeof parsed === "object" ? parsed.detail : null;
    throw new ApiError(response.status, messageOf(response.status, parsed), fieldsOf(detail), parsed);
  }
  return {data: parsed, headers: response.headers, status: response.status};
}

export const api = {
  /** GET a JSON answer. */
  async get(path) { return (await call("GET", path)).data; },
  /** POST/PUT/DELETE with a JSON body (or none); the JSON answer. */
  async send(method, path, json) { return (await call(method, path, {json})).data; },
  /** The whole answer ({data, headers, status}), e.g. to read X-Gpuplane-* headers. */
  call,
};
