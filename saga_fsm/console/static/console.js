// While a saga moves, re-read the live part of its page every few seconds (HTML the
// server rendered and escaped) and stop once the saga has finished.
"use strict";
(function () {
  const live = document.getElementById("live");
  if (!live || !live.dataset.refresh) return;
  const every = 1000 * Number(live.dataset.refresh);
  async function refresh() {
    try {
      const response = await fetch(live.dataset.src, { credentials: "same-origin" });
      if (response.ok) {
        live.innerHTML = await response.text();
        if (!live.querySelector("[data-moving]")) return;
      }
    } catch (err) {
      // The console restarted or the network dropped: try again on the next tick.
    }
    setTimeout(refresh, every);
  }
  setTimeout(refresh, every);
})();
