"""A language model's recipe: weight-only compression with NNCF (``compress_weights``, edgekit.runtimes.genai).

A language model on a small CPU is bound by memory bandwidth: each new token reads every weight once, so
fewer weight bytes are more tokens per second. Weights go to INT8 or INT4 (symmetric or asymmetric, per
group of input channels); activations stay float, quantized on the fly by OpenVINO's CPU plugin. ``ratio``
keeps the most sensitive share of layers in the backup precision (INT8); AWQ and scale estimation use the
calibration text (``edgekit.llm.text``) to choose scales that keep the outputs, not only the weights.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgekit.errors import RecipeInvalid

Weights = Literal["fp32", "gguf", "int8_sym", "int8_asym", "int4_sym", "int4_asym"]
PRECISION = {
    "fp32": "fp32",
    "gguf": "gguf",
    "int8_sym": "int8",
    "int8_asym": "int8",
    "int4_sym": "int4",
    "int4_asym": "int4",
}


class LLMRecipe(BaseModel):
    """One way to package a language model (``--recipe``; ``--auto`` tries several, edgekit.llm.build)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    # fp32: the dequantized reference; gguf: the file's own quantized weights, as the GGUF reader keeps them
    weights: Weights
    group_size: int = Field(default=-1, ge=-1)  # INT4: input channels per scale (-1: per output channel)
    ratio: float = Field(default=1.0, gt=0, le=1)  # INT4: share of layers in INT4 (the rest INT8)
    awq: bool = False
    scale_estimation: bool = False
    calibration_samples: int = Field(default=32, ge=1, le=1024)
    # relative increase of held-out perplexity over the fp32 reference that the gate allows
    perplexity_tolerance: float = Field(default=0.05, gt=0, lt=10)
    runtime_config: dict[str, str] = Field(default_factory=dict)  # OpenVINO plugin settings the package ships

    @model_validator(mode="after")
    def _int4_only(self) -> LLMRecipe:
        int4 = self.weights.startswith("int4")
        if not int4 and (self.group_size != -1 or self.ratio != 1.0 or self.awq or self.scale_estimation):
            raise ValueError("group_size, ratio, awq and scale_estimation apply to int4_sym / int4_asym weights")
        if int4 and self.group_size == 0:
            raise ValueError("group_size must be -1 (per channel) or a positive divisor of the channels (32, 64)")
        return self

    @property
    def precision(self) -> str:
        return PRECISION[self.weights]

    @property
    def data_aware(self) -> bool:
        return self.awq or self.scale_estimation


def parse_recipe(data: Any, *, source: str) -> LLMRecipe:
    if not isinstance(data, dict):
        raise RecipeInvalid(f"{source}: a language-model recipe is a mapping (name, weights, ...)")
    try:
        return LLMRecipe.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "recipe"
        raise RecipeInvalid(f"{source}: {where}: {first['msg']} (see docs/llm.md for the fields)") from None


def is_llm_recipe(data: Any) -> bool:
    return isinstance(data, dict) and "weights" in data and "passes" not in data
