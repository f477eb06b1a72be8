"""HTTP service and search page over a Searcher (`aladin.service.app`, needs the `serve` extra: fastapi, uvicorn,
python-multipart) and explanation heatmaps (`aladin.service.heatmap`, needs only matplotlib)."""
