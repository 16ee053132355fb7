"""Demo phase 1 enrichment (website from e-mail domain): ``--plz-filter``, ``--dry-run``."""

from __future__ import annotations

import argparse
import random

from jobrunner.demo_tools import datev


def main() -> None:
    parser = argparse.ArgumentParser(prog="enrich_email")
    parser.add_argument("--plz-filter", default="")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    rng = random.Random(f"email-{args.plz_filter}")
    datev.log("INFO", "Starte Phase 1 Enrichment...")
    datev.warn_if_dry_run(args.dry_run)
    found = datev.load_entries(args.plz_filter, "Lade Einträge")
    hits = 0
    for i, (name, _) in enumerate(found, 1):
        datev.sleep()
        datev.progress(i, len(found), name)
        if rng.random() < 0.6:
            hits += 1
            domain = name.split(",")[0].split()[0].lower() + ".de"
            datev.log("INFO", f"→ Domain übernommen: {domain}")
        else:
            datev.log("INFO", "→ Keine verwertbare E-Mail-Domain")
    datev.finish(f"{hits} Websites gefunden, {len(found) - hits} ohne Ergebnis")


if __name__ == "__main__":
    main()
