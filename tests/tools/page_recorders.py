"""Scripts a browser test runs in the page (``page.evaluate``) to record what the page showed
from then on, so that a check made later still sees what a reader saw meanwhile."""

# Records every log row the terminal of a job shows, in order, from the moment it is called
# (rows already there included): what the reader saw, even after the card has gone.
RECORD_ROWS = """(jobId) => {
  const terminal = document.querySelector(`[data-terminal][data-job-id="${jobId}"]`);
  const rows = [...terminal.querySelectorAll(".log-row")];
  const seen = window.seenSeqs = rows.map(r => +r.dataset.seq);
  new MutationObserver((changes) => {
    for (const change of changes)
      for (const node of change.addedNodes)
        if (node.classList?.contains("log-row")) seen.push(+node.dataset.seq);
  }).observe(terminal, { childList: true });
}"""

# Records whether the connection banner was shown at any moment from now on, and its text
# then: a check of the page itself could come after the thaw has hidden it again.
RECORD_BANNER = """() => {
  const banner = document.getElementById("conn-banner");
  const record = () => {
    if (banner.hidden) return;
    window.bannerShown = true;
    window.bannerText = banner.textContent;
  };
  window.bannerShown = false;
  record();
  new MutationObserver(record).observe(banner, { attributes: true, attributeFilter: ["hidden"] });
}"""
