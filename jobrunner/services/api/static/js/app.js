// Entry point: what every page has (side panel, live updates), then the page's own part.
import { setUpDialogs } from "./widgets.js";
import { setUpPanel } from "./panel.js";
import { startUpdates } from "./updates.js";
import { initJobsPage } from "./jobs-page.js";
import { initDetailPage } from "./detail.js";

setUpDialogs();
setUpPanel();
const page = document.body.dataset.page;
if (page === "jobs") initJobsPage();
else if (page === "detail") initDetailPage();
startUpdates();
document.documentElement.dataset.ready = "1";
