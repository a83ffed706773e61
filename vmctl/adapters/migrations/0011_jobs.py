"""vmctl schema 0011: durable jobs (docs/architecture.md, "Durable jobs").

procrastinate's own schema (its tables procrastinate_*, functions and triggers), exactly as the
installed procrastinate ships it (pinned to one minor version in pyproject.toml: a procrastinate
upgrade that changes its schema comes with a vmctl migration applying procrastinate's migration
files), and vmctl_jobs: what vmctl records of each job (its kind, VM, project, attempts, result or
error) for `GET /api/v1/jobs/{id}` and for the callers that wait. Applied by `vmctl db upgrade`
(yoyo), in one transaction, like the .sql migrations.
"""

from procrastinate.schema import SchemaManager
from yoyo import step

VMCTL_JOBS = """
CREATE TABLE vmctl_jobs (
    id           bigint PRIMARY KEY,  -- procrastinate_jobs.id (that row may be gone once done)
    kind         text NOT NULL,
    vm           text NOT NULL,
    project      text,
    actor        text,
    state        text NOT NULL DEFAULT 'queued'
                 CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    attempts     integer NOT NULL DEFAULT 0,
    worker       text,
    result       jsonb,
    error        text,
    error_kind   text,
    exit_status  integer,
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz
);
CREATE INDEX vmctl_jobs_vm ON vmctl_jobs (vm);
"""

steps = [
    step(SchemaManager.get_schema()),
    step(VMCTL_JOBS),
]
