"""Demo phase 2 enrichment (web search): ``--plz-filter``, ``--confidence-filter`` (repeatable),
``--search-provider``, ``--headless``, ``--dry-run``."""

from __future__ import annotations

import argparse
import random

from jobrunner.demo_tools import datev


def main() -> None:
    parser = argparse.ArgumentParser(prog="enrich_search")
    parser.add_argument("--plz-filter", default="")
    parser.add_argument(
        "--confidence-filter", action="append", default=[], choices=["none", "low", "medium"]
    )
    parser.add_argument(
        "--search-provider", default="serper", choices=["duckduckgo", "serper", "serpapi"]
    )
    parser.add_argument("--headless", action="store_true")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    rng = random.Random(f"search-{args.plz_filter}-{args.search_provider}")
    datev.log("INFO", "Starte Phase 2 Enrichment...")
    datev.log(
        "INFO",
        f"Such-Provider: {args.search_provider}, Confidence: "
        f"{','.join(args.confidence_filter) or 'alle'}",
    )
    datev.warn_if_dry_run(args.dry_run)
    found = datev.load_entries(args.plz_filter, "Lade Einträge")
    hits = 0
    for i, (name, _) in enumerate(found, 1):
        datev.progress(i, len(found), name)
        datev.sleep()
        roll = rng.random()
        if args.search_provider == "duckduckgo" and roll < 0.08:
            datev.log("ERROR", "Timeout bei Suchanfrage")
        elif roll < 0.7:
            hits += 1
            slug = name.split(",")[0].split()[0].lower()
            datev.log("INFO", f"→ Website gefunden: steuerberater-{slug}.de")
        else:
            datev.log("WARNING", "→ Keine Website gefunden")
    datev.finish(f"{hits} Websites gefunden, {len(found) - hits} ohne Ergebnis")


if __name__ == "__main__":
    main()
