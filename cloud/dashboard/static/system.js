// edgecap dashboard, System: each service's throughput, consumer lag and dead letters (GET /api/system).
"use strict";

const REFRESH_MS = 5000;
const grid = document.getElementById("system");
const at = document.getElementById("system-at");

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function rate(value) {
  return value === null || value === undefined ? "–" : `${value.toFixed(1)}/s`;
}

function table(rows) {
  const out = el("table");
  for (const [name, value] of rows) {
    const tr = el("tr");
    tr.append(el("td", "", name), el("td", "num", String(value)));
    out.append(tr);
  }
  return out;
}

function card(service) {
  const section = el("section", `panel service ${service.up ? "up" : "down"}`);
  section.dataset.service = service.name;
  const title = el("h2");
  const link = el("a", "", service.name);
  link.href = service.url;
  title.append(link, el("span", `dot ${service.up ? "ok" : "down"}`, service.up ? "up" : "down"));
  section.append(title);
  if (!service.up) {
    section.append(el("p", "error", service.error));
    return section;
  }
  section.append(table([
    ["in", `${service.messages_in} · ${rate(service.in_per_s)}`],
    ["out", `${service.messages_out} · ${rate(service.out_per_s)}`],
    ["consumer lag", service.lag_total],
    ["dead letters", service.dead_letters_total],
  ]));
  const details = [
    ...service.consumer_lag.map((l) => [`lag ${l.group || ""} ${l.topic}`, l.lag]),
    ...Object.entries(service.dead_letters).map(([reason, n]) => [`dead: ${reason}`, n]),
  ];
  if (details.length) section.append(el("h3", "", "by topic and reason"), table(details));
  return section;
}

async function refresh() {
  try {
    const response = await fetch("/api/system", { cache: "no-store" });
    if (response.status === 401) location.assign("/login");
    const answer = await response.json();
    if (!answer.services.length) {
      grid.replaceChildren(el("p", "empty", "No services to show: set the dashboard's metrics_targets."));
    } else {
      grid.replaceChildren(...answer.services.map(card));
    }
    at.textContent = `as of ${new Date(answer.scraped_at * 1000).toLocaleTimeString([], { hour12: false })}`;
  } catch (error) {
    at.textContent = `could not read /api/system: ${error}`;
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
