"""Recipes: which passes to run, in order, with typed options. YAML in, validated pydantic out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgekit.errors import RecipeInvalid, describe_validation, load_yaml
from edgekit.passes.base import PassConfig


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    name: str = "recipe"
    description: str = ""
    runtime: str | None = None  # a name in edgekit_agent.runtimes.REGISTRY
    tolerance: float | None = Field(default=None, gt=0, lt=1)
    passes: list[PassConfig] = Field(default_factory=list)

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, value: str | None) -> str | None:
        from edgekit_agent.runtimes import REGISTRY

        if value is not None and value not in REGISTRY:
            raise ValueError(f"runtime {value!r} is not one of {', '.join(REGISTRY)}")
        return value

    @field_validator("passes", mode="before")
    @classmethod
    def _typed_passes(cls, value: Any) -> list[PassConfig]:
        from edgekit.passes import REGISTRY

        if not isinstance(value, list):
            raise ValueError("passes must be a list of {type: ..., ...} mappings")
        out = []
        for i, item in enumerate(value):
            if isinstance(item, PassConfig):
                out.append(item)
                continue
            if not isinstance(item, dict) or "type" not in item:
                raise ValueError(f"pass #{i + 1} needs a 'type' (one of: {', '.join(sorted(REGISTRY))})")
            kind = item["type"]
            if kind not in REGISTRY:
                raise ValueError(f"pass #{i + 1}: unknown pass type {kind!r} (known: {', '.join(sorted(REGISTRY))})")
            try:
                out.append(REGISTRY[kind].Config.model_validate(item))
            except ValidationError as exc:
                raise ValueError(f"pass #{i + 1} ({kind}): {describe_validation(exc)}") from None
        return out


def parse_recipe(data: Any, *, source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeInvalid(f"{source}: a recipe must be a YAML mapping with a 'passes' list")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeInvalid(f"{source}: {describe_validation(exc)}") from None


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    data = load_yaml(path, RecipeInvalid, "recipe")
    return parse_recipe(data, source=str(path))
