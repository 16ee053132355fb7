// Entry point: what every page has (side panel, live updates), then the page's own part.
import { setUpDialogs } from "./widgets.js";
import { setUpPanel } from "./panel.js";
import { startUpdates } from "./updates.js";
import { initJobsPage } from "./jobs-page.js";
import { initDetailPage } from "./detail.js";
import { initBatchesPage } from "./batches-page.js";
import { initBatchDetailPage } from "./batch-detail.js";
import { setUpConfirm } from "./confirm.js";

setUpDialogs();
setUpPanel();
const page = document.body.dataset.page;
setUpConfirm();
if (page === "jobs") initJobsPage();
else if (page === "detail") initDetailPage();
else if (page === "batches") initBatchesPage();
else if (page === "batch") initBatchDetailPage();
startUpdates();
document.documentElement.dataset.ready = "1";
