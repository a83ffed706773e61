"""The lab's building blocks (standard library only, so it runs before any virtualenv exists)."""
