"""The service's routers, one per concern; each `router(state)` builds its endpoints over the shared state."""
