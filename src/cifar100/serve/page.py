"""GET /: the page a person uses to classify images with the served model."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse


def page_route(service) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def page() -> HTMLResponse:
        return HTMLResponse("<!doctype html><title>cifar100</title><p>cifar100 service</p>")

    return router
