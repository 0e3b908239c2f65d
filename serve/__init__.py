"""Ray Serve HTTP endpoint of framepipe (serve/app.py) and its signed webhooks (serve/webhook.py)."""
