"""Per-connection settings: pmatch home, image roots and limits, default model names."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .home import pmatch_home

DEFAULT_TEXT_MODEL = "minilm-l6-v2"
DEFAULT_IMAGE_MODEL = "efficientnet-lite0"
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # ~ 7700 x 5200; larger images are refused as "too large"
DEFAULT_MAX_IMAGE_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Everything the SQL functions of one connection need to know.

    ``image_roots``: directories image paths must resolve into (symlinks resolved); relative paths
    are looked up under each root in order. Default: the current directory at connect time.
    """

    home: Path
    image_roots: tuple[Path, ...]
    text_model: str = DEFAULT_TEXT_MODEL
    image_model: str = DEFAULT_IMAGE_MODEL
    matcher: str = "default"  # trained matcher name; its active version is used, else zero-shot
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    index_dir: Path | None = None  # where LanceDB indexes live; default: beside the database file
    text_batch_size: int = 64
    pair_top_m: int | None = None  # candidates per source a trained pair scorer re-reads (None: the bundle's)
    image_batch_size: int = 8  # EfficientNet runs faster per photo in batches of 8 than of 32 (benchmarks/README.md)
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def create(cls, home: str | os.PathLike[str] | None = None,
               image_roots: list[str | os.PathLike[str]] | tuple | str | None = None,
               **kwargs: object) -> Settings:
        """Validate and normalise user-given settings."""
        if isinstance(image_roots, str | os.PathLike):
            image_roots = [image_roots]
        roots = []
        for r in image_roots if image_roots is not None else [os.getcwd()]:
            p = Path(r).expanduser()
            if not p.is_dir():
                raise ConfigError(f"image root {str(r)!r} is not an existing directory")
            roots.append(p.resolve())
        for key in ("max_image_pixels", "max_image_bytes", "text_batch_size", "image_batch_size"):
            if key in kwargs and (not isinstance(kwargs[key], int) or kwargs[key] <= 0):
                raise ConfigError(f"{key} must be a positive integer, got {kwargs[key]!r}")
        if kwargs.get("pair_top_m") is not None and (not isinstance(kwargs["pair_top_m"], int)
                                                     or kwargs["pair_top_m"] < 0):
            raise ConfigError(f"pair_top_m must be a non-negative integer, got {kwargs['pair_top_m']!r}")
        if kwargs.get("index_dir") is not None:
            kwargs["index_dir"] = Path(kwargs["index_dir"]).expanduser().resolve()  # type: ignore[arg-type]
        return cls(home=pmatch_home(home), image_roots=tuple(roots), **kwargs)  # type: ignore[arg-type]
