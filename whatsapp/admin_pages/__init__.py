"""The connection-health admin: session list and page, health dashboard, live updates."""
