"""The notifier service: delivers each ended job's webhooks (README "Webhooks")."""
