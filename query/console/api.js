// The API the console calls: the same origin's /v1 endpoints, with the key of this tab.
// The key lives in sessionStorage only (gone when the tab closes), never in a URL.

const KEY = "tally.key";

export const key = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
};

// An error answer, or no answer at all (status 0, code "unreachable").
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const TIMEOUT_MS = 20_000;

// GET `path`, or POST `body` to it (as JSON); the answer's JSON, or an ApiError.
export async function call(path, { body, withKey = key.get() } = {}) {
  const headers = { accept: "application/json" };
  if (withKey) headers["x-api-key"] = withKey;
  if (body !== undefined) headers["content-type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method: body === undefined ? "GET" : "POST",
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(TIMEOUT_MS),
      cache: "no-store",
    });
  } catch (e) {
    const why = e && e.name === "TimeoutError" ? `did not answer within ${TIMEOUT_MS / 1000} s` : "cannot be reached";
    throw new ApiError(0, "unreachable", `The Tally API ${why}. Is the query service running?`);
  }
  let answer = null;
  try {
    answer = await response.json();
  } catch {
    // An answer that is not JSON: a proxy's error page, say.
  }
  if (!response.ok) {
    const code = (answer && answer.error) || `http_${response.status}`;
    const message = (answer && answer.message) || `The API answered ${response.status} ${response.statusText}`;
    throw new ApiError(response.status, code, message);
  }
  return answer;
}

// POST /v1/query.
export const query = (body) => call("/v1/query", { body });
