from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from backend.api.auth import Viewer
from backend.api.deps import SessionDep, SettingsDep
from backend.api.jobs import check_spec, raw_spec_from_body
from backend.shapes import data_shape, parameter_count
from backend.spec import EXAMPLE_SPEC_YAML, JobSpec, field_errors
from backend.sweeps import SweepError, expand

router = APIRouter(prefix="/specs", tags=["specs"])


class ExampleSpec(BaseModel):
    yaml: str


@router.get("/example", response_model=ExampleSpec)
def example_spec(who: Viewer) -> ExampleSpec:
    """The example job (an MLP on scikit-learn's digits), as the editor's starting text."""
    return ExampleSpec(yaml=EXAMPLE_SPEC_YAML)


@router.get("/schema")
def spec_schema(who: Viewer) -> dict[str, Any]:
    """The JSON Schema of a job spec."""
    return JobSpec.model_json_schema()


class SpecCheck(BaseModel):
    name: str
    jobs: int
    parameters: int | None = Field(description="null: the worker counts them when the job starts (a model from an entry point)")
    input_shape: list[int] | None = Field(description="null: known once the worker loads the data (data from an entry point)")
    outputs: int | None


@router.post(
    "/validate",
    response_model=SpecCheck,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}, "application/yaml": {"schema": {"type": "string"}}},
        }
    },
)
def validate_spec(who: Viewer, raw: Annotated[dict, Depends(raw_spec_from_body)], session: SessionDep, settings: SettingsDep) -> SpecCheck:
    """Check a spec (or a sweep) without running it: 422 naming the field, or what it would build."""
    try:
        if "sweep" in raw:
            specs = [s for _, s in expand(raw, settings.max_sweep_jobs)]
        else:
            specs = [JobSpec.model_validate(raw)]
    except SweepError as exc:
        raise RequestValidationError([{**e, "loc": ["body", *e["loc"]]} for e in exc.errors]) from None
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ["body", *e["loc"]]} for e in field_errors(exc, raw)]) from None
    uploaded = [check_spec(session, s, who.team_id, settings) for s in specs][0]
    first = specs[0]
    shape = data_shape(first.data, uploaded)
    return SpecCheck(
        name=first.name,
        jobs=len(specs),
        parameters=parameter_count(first, uploaded),
        input_shape=None if shape is None else list(shape.input_shape),
        outputs=None if shape is None else shape.outputs,
    )
