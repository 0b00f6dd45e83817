"""lorakit serve: many experiments on one base model over HTTP (Starlette on uvicorn, the serve extra)."""
