// The console's shell: a hash router over four pages, the sign-out button and the live-events indicator.
// Each page module exports `title` and `mount(root, ctx)`, which returns a function that tears it down.

import {api} from "./lib/api.js";
import {events} from "./lib/events.js";
import {refreshTimes} from "./lib/format.js";
import * as gpus from "./pages/gpus.js";
import * as inference from "./pages/inference.js";
import * as keys from "./pages/keys.js";
import * as backup from "./pages/backup.js";

const PAGES = {gpus, inference, keys, backup};
const DEFAULT_PAGE = "gpus";
const view = document.getElementById("view");
let teardown = null;

function pageName() {
  const name = location.hash.replace(/^#\/?/, "").split("?")[0];
  return Object.hasOwn(PAGES, name) ? name : DEFAULT_PAGE;
}

async function show() {
  const name = pageName();
  if (teardown) teardown();
  teardown = null;
  for (const link of document.querySelectorAll("nav a[data-page]")) {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const page = PAGES[name];
  document.title = `${page.title} · gpuplane`;
  view.replaceChildren();
  view.dataset.page = name;
  teardown = (await page.mount(view, {api, events})) || null;
  view.focus({preventScroll: true});
}

document.getElementById("logout").addEventListener("click", async () => {
  await fetch("/logout", {method: "POST", credentials: "same-origin"});
  location.replace("/");
});

const live = document.getElementById("live");
events.onStatus((connected) => {
  live.textContent = connected ? "Live" : "Reconnecting…";
  live.dataset.state = connected ? "on" : "off";
});

window.addEventListener("hashchange", show);
setInterval(() => refreshTimes(), 1000);
show();
