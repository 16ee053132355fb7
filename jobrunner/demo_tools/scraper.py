"""Demo DATEV scraper: ``--plz-filter``, ``--headless``."""

from __future__ import annotations

import argparse
import random

from jobrunner.demo_tools import datev


def main() -> None:
    parser = argparse.ArgumentParser(prog="scraper")
    parser.add_argument("--plz-filter", default="")
    parser.add_argument("--headless", action="store_true")
    args = parser.parse_args()
    rng = random.Random(args.plz_filter)
    datev.log("INFO", "Starte DATEV Scraper...")
    datev.log("INFO", f"Browser-Modus: {'headless' if args.headless else 'sichtbar'}")
    found = datev.load_entries(args.plz_filter, "Suche Steuerberater")
    new = 0
    for i, (name, code) in enumerate(found, 1):
        datev.sleep()
        datev.progress(i, len(found), name)
        if rng.random() < 0.15:
            datev.log("WARNING", f"→ Profil unvollständig: {name} ({code})")
        else:
            new += 1
            datev.log("INFO", f"→ Gespeichert: {name} ({code})")
    datev.finish(f"{new} Steuerberater gespeichert, {len(found) - new} unvollständig")


if __name__ == "__main__":
    main()
