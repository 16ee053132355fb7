"""Demo blacklist sync: compares the blacklist with the spreadsheet in a second or two."""

from __future__ import annotations

from jobrunner.demo_tools import datev


def main() -> None:
    datev.log("INFO", "Starte Blacklist Sync...")
    entries = datev.entries("bl", count=5)
    for i, (name, _) in enumerate(entries, 1):
        datev.sleep()
        datev.progress(i, len(entries), f"{name} abgeglichen")
    datev.log("SUCCESS", f"{len(entries)} Einträge abgeglichen, 0 entfernt")
    datev.log("INFO", "Job beendet")


if __name__ == "__main__":
    main()
