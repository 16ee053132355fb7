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
    if args.dry_run:
        datev.log("WARNING", "Dry Run: es werden keine Änderungen gespeichert")
    datev.fail_if_unreachable(args.plz_filter)
    plz = f"{args.plz_filter}*" if args.plz_filter else "alle"
    datev.log("INFO", f"Lade Einträge für PLZ {plz}...")
    found = datev.entries(args.plz_filter)
    datev.log("INFO", f"{len(found)} Einträge gefunden")
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
    datev.log("INFO", "Verarbeitung abgeschlossen")
    datev.log("SUCCESS", f"{hits} Websites gefunden, {len(found) - hits} ohne Ergebnis")
    datev.log("INFO", "Job beendet")


if __name__ == "__main__":
    main()
