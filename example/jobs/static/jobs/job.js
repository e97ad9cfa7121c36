// Follows a job on its page: moves the state and the progress bar while it runs, then shows the
// finished page as the server renders it (times, durations, result), without a reload.
(function () {
  "use strict";
  const card = document.getElementById("job");
  if (!card) return;
  const url = card.dataset.apiUrl;
  const labels = JSON.parse(document.getElementById("state-labels").textContent);
  const $ = (id) => document.getElementById(id);
  const isFinal = (state) => state === "SUCCESS" || state === "FAILURE";

  function render(job) {
    const state = $("state");
    state.textContent = labels[job.state] || job.state;
    state.className = "state state-" + job.state.toLowerCase();
    $("progress").value = job.progress;
    $("progress-text").textContent = job.progress + "%";
  }

  async function showFinishedPage() {
    const response = await fetch(window.location.href, { headers: { Accept: "text/html" } });
    if (!response.ok) return false;
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = page.getElementById("job");
    if (!fresh) return false;
    card.innerHTML = fresh.innerHTML;
    card.dataset.final = fresh.dataset.final;
    card.dataset.callbacks = fresh.dataset.callbacks;
    return true;
  }

  let finalPolls = 0;
  async function poll() {
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" } });
      if (response.ok) {
        const job = await response.json();
        render(job);
        if (isFinal(job.state)) {
          finalPolls += 1;
          // The follow-up callback lands a moment after the end: wait for it, a little.
          if (job.callbacks_ran.length > 0 || finalPolls > 25) {
            if (await showFinishedPage()) return;
          }
        }
      }
    } catch (err) {
      console.warn("poll failed", err);
    }
    setTimeout(poll, 400);
  }
  if (card.dataset.final !== "true" || card.dataset.callbacks === "0") poll();
})();
