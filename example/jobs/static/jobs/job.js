// Polls the job's API URL and moves the progress bar until the job is final.
(function () {
  "use strict";
  const card = document.getElementById("job");
  if (!card) return;
  const url = card.dataset.apiUrl;
  const $ = (id) => document.getElementById(id);

  function render(job) {
    const state = $("state");
    state.textContent = job.state;
    state.className = "state state-" + job.state.toLowerCase();
    $("progress").value = job.progress;
    $("progress-text").textContent = job.progress + "%";
    $("attempts").textContent = job.attempts;
    $("callbacks").textContent = job.callbacks_ran.length ? job.callbacks_ran.join(", ") : "none yet";
    if (job.state === "SUCCESS") {
      $("result").hidden = false;
      $("result-json").textContent = JSON.stringify(job.result, null, 2);
      if (job.download_url) {
        $("download").hidden = false;
        $("download-link").href = job.download_url;
      }
    }
    if (job.state === "FAILURE") {
      $("error").hidden = false;
      $("error-text").textContent = job.error;
    }
  }

  let polls = 0;
  async function poll() {
    polls += 1;
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" } });
      if (response.ok) {
        const job = await response.json();
        render(job);
        // Keep polling a little after the end so the follow-up callbacks show up too.
        const final = job.state === "SUCCESS" || job.state === "FAILURE";
        if (final && job.callbacks_ran.length > 0) return;
        if (final && polls > 600) return;
      }
    } catch (err) {
      console.warn("poll failed", err);
    }
    setTimeout(poll, 400);
  }
  poll();
})();
