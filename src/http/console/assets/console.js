// Ferry console: progressive behaviour only; every page works without it.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // Forms marked `confirm` ask first (revoke, lift).
  for (const form of document.querySelectorAll("form.confirm")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm || "Are you sure?")) event.preventDefault();
    });
  }
  // The decisions page's "refresh every 5 s" box, remembered for the tab.
  const live = document.getElementById("live");
  if (live) {
    live.checked = sessionStorage.getItem("ferry-live") === "1";
    live.addEventListener("change", () => {
      sessionStorage.setItem("ferry-live", live.checked ? "1" : "0");
      if (live.checked) window.location.reload();
    });
    const seconds = Number(live.dataset.refresh || "5");
    setInterval(() => { if (live.checked) window.location.reload(); }, seconds * 1000);
  }
});
