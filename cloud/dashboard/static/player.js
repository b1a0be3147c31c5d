// edgecap dashboard, a segment: click a word to hear it; the word being played is marked.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const player = document.getElementById("player");
  const words = [...document.querySelectorAll("#words .word")];
  if (!player || !words.length) return;
  for (const word of words) {
    word.addEventListener("click", () => {
      player.currentTime = Number(word.dataset.start);
      player.play().catch(() => {}); // a browser that refuses to play still seeks
    });
  }
  const mark = () => {
    const t = player.currentTime;
    for (const word of words) {
      word.classList.toggle("playing", t >= Number(word.dataset.start) && t < Number(word.dataset.end));
    }
  };
  player.addEventListener("timeupdate", mark);
  player.addEventListener("seeked", mark);
});
