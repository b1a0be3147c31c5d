// edgecap dashboard, an agent's page (admins): send a configuration to the agent.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("config-form");
  const result = document.getElementById("config-result");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const body = { muted: data.get("muted") === "on" };
    if (data.get("heartbeat_s")) body.heartbeat_s = Number(data.get("heartbeat_s"));
    if (data.get("vad_aggressiveness")) body.vad_aggressiveness = Number(data.get("vad_aggressiveness"));
    if (data.get("log_level")) body.log_level = data.get("log_level");
    result.textContent = "sending…";
    const response = await fetch(`/api/agents/${encodeURIComponent(form.dataset.agentId)}/config`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken() },
      body: JSON.stringify(body),
    });
    const answer = await response.json().catch(() => ({}));
    result.textContent = response.ok
      ? `sent: version ${answer.config.version}; the agent applies it when it next hears from the bridge`
      : `refused (${response.status}): ${JSON.stringify(answer.detail)}`;
    result.className = response.ok ? "ok" : "error";
  });
});
