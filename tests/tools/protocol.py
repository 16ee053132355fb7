"""A test tool speaking the progress and result protocol, with [i/N] lines and levels."""

import json

print('##jobrunner:progress {"percent": 5, "phase": "download", "message": "lade Liste"}')
print("2025-12-27 12:15:00 WARNING something odd")
print("INFO the word ERROR in the middle does not make this an error")
print("[12:15:01] ERROR real error")
print("INFO    [3/4] Mustermann")
print("##jobrunner:progress {broken json")
result = {"summary": "89 Websites gefunden, 38 ohne Ergebnis", "found": 89, "missing": 38}
print("##jobrunner:result " + json.dumps(result))
print('##jobrunner:progress {"current": 4, "total": 4, "phase": "fertig", "message": "done"}')
