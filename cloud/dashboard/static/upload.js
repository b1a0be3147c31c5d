// edgecap dashboard, Upload (admins): an image goes to the detector, an audio file to the
// transcribers, both through Kafka like a device's; the page shows the progress and then the boxes,
// or the transcript with its words to click to hear.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const POLL_MS = 700;

const drop = document.getElementById("drop");
const input = document.getElementById("file");
const progress = document.getElementById("progress");
const status = document.getElementById("upload-status");
const result = document.getElementById("result");
const resultTitle = document.getElementById("result-title");
const resultBody = document.getElementById("result-body");
const player = document.getElementById("player");

function say(text, error) {
  status.textContent = text;
  status.className = error ? "error" : "sub";
}

// POST with upload progress (fetch cannot report it): resolves to [status, parsed JSON body]
function send(url, file) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    xhr.setRequestHeader("X-CSRF-Token", csrfToken());
    xhr.setRequestHeader("Content-Type", file.type || "application/octet-stream");
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) progress.value = event.loaded / event.total;
    };
    xhr.onload = () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (error) { /* not JSON */ }
      resolve([xhr.status, body]);
    };
    xhr.onerror = () => reject(new Error("the upload failed: network error"));
    xhr.send(file);
  });
}

async function poll(url, ready) {
  for (;;) {
    const response = await fetch(url, { cache: "no-store" });
    if (response.status === 401) location.assign("/login");
    if (response.ok) {
      const body = await response.json();
      if (ready(body)) return body;
    }
    await new Promise((done) => setTimeout(done, POLL_MS));
  }
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function drawBoxes(frame) {
  const picture = svg("svg", { class: "boxes", viewBox: `0 0 ${frame.width} ${frame.height}`, role: "img",
                               "aria-label": frame.boxes.map((b) => b.label).join(", ") || "no objects" });
  picture.append(svg("image", { href: frame.image_url, width: frame.width, height: frame.height }));
  const size = Math.max(frame.width, frame.height) / 28;
  for (const box of frame.boxes) {
    const group = svg("g", { class: "box", "data-label": box.label });
    group.append(svg("rect", { x: box.x1, y: box.y1, width: box.x2 - box.x1, height: box.y2 - box.y1,
                               "vector-effect": "non-scaling-stroke" }),
                 svg("text", { x: box.x1 + 4, y: box.y1 + 4, "font-size": size, "dominant-baseline": "hanging" },
                     `${box.label} ${Math.round(100 * box.score)}%`));
    picture.append(group);
  }
  return picture;
}

async function uploadImage(file) {
  say(`uploading ${file.name}…`);
  const [code, body] = await send("/api/frames?uploader=upload", file);
  if (code !== 202) return say(`refused (${code}): ${body.detail || "?"}`, true);
  say("in Kafka: waiting for the detector…");
  const frame = await poll(body.url, () => true);
  resultTitle.textContent = `${file.name}: ${frame.boxes.length} object(s)`;
  resultBody.replaceChildren(drawBoxes(frame));
  const link = document.createElement("a");
  link.href = `/frames?agent_id=${encodeURIComponent(frame.agent_id)}`;
  link.textContent = "all uploaded frames";
  resultBody.append(link);
  result.hidden = false;
  say(`done: ${frame.boxes.map((b) => b.label).join(", ") || "nothing found"}`);
}

function renderTranscript(job) {
  const words = document.createElement("p");
  words.className = "words";
  words.id = "words";
  for (const piece of job.segments) {
    if (!piece.words.length) { // not transcribed yet, or the draft's text (no word times)
      const text = document.createElement("span");
      text.className = piece.final ? "final-text" : "pending";
      text.textContent = piece.final ? piece.final.text : "…";
      words.append(text, " ");
      continue;
    }
    for (const word of piece.words) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "word";
      button.dataset.start = word.start;
      button.dataset.end = word.end;
      button.title = `${Number(word.start).toFixed(2)} s`;
      button.textContent = word.word.trim();
      button.addEventListener("click", () => {
        player.currentTime = Number(word.start);
        player.play().catch(() => {});
      });
      words.append(button, " ");
    }
  }
  resultBody.replaceChildren(words);
}

async function uploadAudio(file) {
  say(`uploading ${file.name}…`);
  const [code, body] = await send(`/api/jobs?name=${encodeURIComponent(file.name)}`, file);
  if (code !== 202) return say(`refused (${code}): ${body.detail || "?"}`, true);
  player.src = URL.createObjectURL(file); // the words' times are times in this very file
  player.hidden = false;
  result.hidden = false;
  resultTitle.textContent = file.name;
  say(`in Kafka as ${body.segments} segment(s): waiting for the transcribers…`);
  const job = await poll(body.url, (answer) => {
    renderTranscript(answer);
    say(`transcribed ${answer.progress.finals} of ${answer.progress.segments} segment(s)…`);
    return answer.progress.done;
  });
  say(`done: ${job.progress.segments} segment(s); click a word to hear it`);
}

async function upload(file) {
  progress.hidden = false;
  progress.value = 0;
  result.hidden = true;
  try {
    if (file.type.startsWith("image/")) await uploadImage(file);
    else await uploadAudio(file);
  } catch (error) {
    say(String(error), true);
  }
}

if (drop) {
  input.addEventListener("change", () => { if (input.files.length) upload(input.files[0]); });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) upload(event.dataTransfer.files[0]);
  });
}
