// farm web: live updates. The page's event stream sends {parts: {element id: HTML}};
// each part replaces the element with that id. EventSource reconnects by itself.
(function () {
  const url = document.body.dataset.events;
  const live = document.getElementById("live");
  if (!url || !window.EventSource) return;

  // a clip that is playing is not cut off when its card changes around it
  function keepsPlaying(old, html) {
    const video = old.querySelector("video");
    if (!video || video.paused) return false;
    const t = document.createElement("template");
    t.innerHTML = html.trim();
    const next = t.content.querySelector("video");
    return next !== null && next.getAttribute("src") === video.getAttribute("src");
  }

  const source = new EventSource(url);
  source.onopen = () => { live.className = "small on"; live.title = "live"; };
  source.onerror = () => { live.className = "small off"; live.title = "reconnecting"; };
  source.onmessage = (event) => {
    const parts = JSON.parse(event.data).parts || {};
    for (const [id, html] of Object.entries(parts)) {
      const old = document.getElementById(id);
      if (old && !keepsPlaying(old, html)) old.outerHTML = html;
    }
  };
})();
