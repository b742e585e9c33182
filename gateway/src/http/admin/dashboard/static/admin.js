// The dashboard's only script: live sections refresh themselves, and
// destructive buttons ask first. Everything works without it.
"use strict";

document.addEventListener("submit", (event) => {
  const question = event.target.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

// A section with data-refresh="ms" is fetched again every ms and replaced
// in place, while the page is visible.
for (const section of document.querySelectorAll("[data-refresh]")) {
  const every = Number(section.getAttribute("data-refresh")) || 5000;
  const refresh = async () => {
    if (document.hidden) return;
    try {
      const response = await fetch(window.location.href, {
        credentials: "same-origin",
        headers: { accept: "text/html" },
      });
      if (!response.ok || response.redirected) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById(section.id);
      if (fresh) section.replaceChildren(...fresh.childNodes);
    } catch (_) {
      // A missed refresh is retried at the next tick.
    }
  };
  window.setInterval(refresh, every);
}
