"""The backfill's listing stage: SOURCE a page at a time, inside the dataset.

Its own small module: Ray imports a task's module in the worker that runs it, and the listing needs only
``framepipe.sources``, not the models' stack that ``jobs.stages`` brings (about 0.4 s of CPU less at the job's start,
when the model actors are importing and loading too)."""

from __future__ import annotations

from typing import Iterator

from framepipe import sources

LIST_PAGE = 1000  # inputs per listing page


def list_inputs(batch: dict, root: str, images: bool, timeout_s: float) -> Iterator[dict]:
    page: list[sources.Source] = []
    for src in sources.iter_videos(root, timeout_s=timeout_s, images=images):
        page.append(src)
        if len(page) == LIST_PAGE:
            yield _page(page)
            page = []
    if page:
        yield _page(page)


def _page(srcs: list[sources.Source]) -> dict:
    return {"source": [s.source for s in srcs], "identity": [s.identity for s in srcs]}
