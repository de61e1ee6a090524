// API keys for the page: when the worker answers 401, ask for the key once and keep it for this tab
// (sessionStorage: gone when the tab closes, never in localStorage or a cookie). Every same-origin
// fetch then sends it as a Bearer header. EventSource and <img src> cannot send headers, so they use
// the signed URL the worker gave for each job (its ?token=, kept per job id for this tab).

const KEY = "sdworker.apiKey";
const TOKENS = "sdworker.tokens";
const plainFetch = window.fetch.bind(window);
let asking = null;
let declined = false;

function sameOrigin(input) {
  const url = new URL(typeof input === "string" ? input : input.url, location.href);
  return url.origin === location.origin;
}

async function authedFetch(input, init = {}) {
  if (!sameOrigin(input)) return plainFetch(input, init);
  const send = (key) => {
    const headers = new Headers(init.headers || {});
    if (key) headers.set("Authorization", `Bearer ${key}`);
    return plainFetch(input, { ...init, headers });
  };
  let res = await send(sessionStorage.getItem(KEY));
  if (res.status === 401 && !declined) {
    // One prompt at a time: the page's polls would otherwise stack a dialog each.
    asking = asking || Promise.resolve(window.prompt("This worker needs an API key:"));
    const key = ((await asking) || "").trim();
    asking = null;
    if (key) {
      sessionStorage.setItem(KEY, key);
      res = await send(key);
    } else {
      declined = true; // asked once; a reload asks again
    }
  }
  return res;
}

window.fetch = authedFetch;

function tokens() {
  try {
    return JSON.parse(sessionStorage.getItem(TOKENS) || "{}");
  } catch (_) {
    return {};
  }
}

/** Remember the token of a signed URL the worker gave for a job (no token: auth is off). */
export function rememberSignedUrl(id, url) {
  const token = new URL(url, location.href).searchParams.get("token");
  if (!token) return;
  const all = tokens();
  all[id] = token;
  sessionStorage.setItem(TOKENS, JSON.stringify(all));
}

/** The URL with the job's token, if it has one. */
export function signedUrl(id, url) {
  const token = tokens()[id];
  if (!token) return url;
  return `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
}
