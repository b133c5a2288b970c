"""The Open Inference Protocol (KServe / Triton v2 REST) for the served model."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse


def v2_router(service) -> APIRouter:
    router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])

    @router.get("/health/live", summary="The server is up")
    async def live() -> dict:
        return {"live": True}

    @router.get("/health/ready", summary="The model is loaded and warmed up")
    async def ready():
        if not service.ready:
            return JSONResponse({"ready": False}, status_code=503, headers={"Retry-After": "1"})
        return {"ready": True}

    return router
