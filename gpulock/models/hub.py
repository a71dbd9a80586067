"""A Hugging Face repository: where its files are served and where its cache folder lies."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from gpulock.store import Store


def hf_endpoint() -> str:
    """The hub that `hf://` models come from: HF_ENDPOINT, as huggingface_hub reads it."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


@dataclass(frozen=True)
class HubRepo:
    """`hf://org/name` or `hf://datasets/org/name`."""

    repo_id: str
    kind: str  # "model" or "dataset"

    @classmethod
    def of(cls, source: str) -> HubRepo:
        """The repository an `hf://` source names."""
        repo = source.removeprefix("hf://")
        if repo.startswith("datasets/"):
            return cls(repo.removeprefix("datasets/"), "dataset")
        return cls(repo, "model")

    def folder(self, store: Store) -> Path:
        """This repository's folder in the store's Hugging Face cache."""
        return store.layout.hf_repo(self.kind, self.repo_id)

    def url(self, endpoint: str, commit: str, path: str) -> str:
        """Where the hub serves `path` at `commit`."""
        prefix = "datasets/" if self.kind == "dataset" else ""
        return f"{endpoint}/{prefix}{self.repo_id}/resolve/{commit}/{quote(path)}"
