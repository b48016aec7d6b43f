from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from backend.spec import EXAMPLE_SPEC_YAML, JobSpec

router = APIRouter(prefix="/specs", tags=["specs"])


class ExampleSpec(BaseModel):
    yaml: str


@router.get("/example", response_model=ExampleSpec)
def example_spec() -> ExampleSpec:
    """The example job (an MLP on scikit-learn's digits), as the editor's starting text."""
    return ExampleSpec(yaml=EXAMPLE_SPEC_YAML)


@router.get("/schema")
def spec_schema() -> dict[str, Any]:
    """The JSON Schema of a job spec."""
    return JobSpec.model_json_schema()
