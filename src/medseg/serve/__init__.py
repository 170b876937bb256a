"""`medseg serve`: a trained run behind an HTTP API and a web page (FastAPI on uvicorn)."""
