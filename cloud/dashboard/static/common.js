// edgecap dashboard, every page: times in the reader's own zone, and logging out.
"use strict";

function localTimes(root) {
  for (const node of root.querySelectorAll("time[data-t]")) {
    const at = new Date(Number(node.dataset.t) * 1000);
    if (Number.isNaN(at.getTime())) continue;
    node.dateTime = at.toISOString();
    if (!node.title) node.title = at.toISOString();
    const longForm = /\d{4}-\d\d-\d\d/.test(node.textContent);
    node.textContent = longForm ? at.toLocaleString([], { hour12: false }) : at.toLocaleTimeString([], { hour12: false });
  }
}

function csrfToken() {
  try {
    return JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRF-Token"] || "";
  } catch (error) {
    return "";
  }
}

async function logout() {
  await fetch("/api/logout", { method: "POST", headers: { "X-CSRF-Token": csrfToken() } });
  location.assign("/login");
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  const button = document.getElementById("logout");
  if (button) button.addEventListener("click", logout);
});
document.addEventListener("htmx:afterSwap", (event) => localTimes(event.detail.target));
// a session that ended while a page was open: htmx's requests get 401; go and log in again
document.addEventListener("htmx:responseError", (event) => {
  if (event.detail.xhr.status === 401) location.assign("/login");
});
