"""Ray jobs of framepipe (backfills); they call the core library, they do not re-implement it."""
