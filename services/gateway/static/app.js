// Kiln's page: a small hash router. The URL always says what is shown, so a reload (or a
// shared link) comes back to the same place: #/ (new project), #/projects, #/g/<generation>.

import { clearKey, getKey, takeKeyFromUrl } from "./api.js";
import { GenerationPage } from "./generation.js";
import { showCreatePage, showKeyPage, showProjectsPage } from "./pages.js";

const main = document.getElementById("main");
const changeKey = document.getElementById("change-key");
let page = null; // the generation page being shown, stopped when leaving it
let handoff = null; // the 201 body of the POST that led here (its stream_url has a token)

function navigate(hash, accepted = null) {
  handoff = accepted;
  if (location.hash === hash) route();
  else location.hash = hash;
}

function onAuthError(message) {
  clearKey();
  leave();
  changeKey.hidden = true;
  showKeyPage(main, { message, done: route });
}

function leave() {
  page?.destroy();
  page = null;
}

function markNav(name) {
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function focusHeading() {
  const heading = main.querySelector("h1");
  if (heading && document.activeElement === document.body) {
    heading.tabIndex = -1;
    heading.focus({ preventScroll: true });
  }
}

function route() {
  leave();
  takeKeyFromUrl();
  if (!getKey()) {
    changeKey.hidden = true;
    markNav("");
    showKeyPage(main, { done: route });
    return;
  }
  changeKey.hidden = false;
  const accepted = handoff;
  handoff = null;
  const hash = location.hash || "#/";
  const generation = hash.match(/^#\/g\/([A-Za-z0-9_-]{1,64})$/);
  if (generation) {
    markNav("");
    page = new GenerationPage(main, generation[1], { accepted, navigate, onAuthError });
    page.start();
  } else if (hash === "#/projects") {
    markNav("projects");
    showProjectsPage(main, { onAuthError });
  } else {
    markNav("new");
    showCreatePage(main, { navigate, onAuthError });
  }
  focusHeading();
}

changeKey.addEventListener("click", () => onAuthError(""));
window.addEventListener("hashchange", () => route());
route();
