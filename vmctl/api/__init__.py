"""The HTTP API (`vmctl serve`): the prototype's JSON contract on the same services as the CLI.

    POST   /api/v1/vm              create ({"Name", "RAM", "CPU", "Disk"}, numbers as strings) → 201
    GET    /api/v1/vm              list: [{Name, RAM, CPU, Disk, IP, CreatedAt}]
    GET    /api/v1/vm/{name}       one VM
    DELETE /api/v1/vm/{name}       delete → 204
    POST   /api/v1/ip/             look for one VM's address now ({"name"}) → the VM
    POST   /api/v1/phone-home/{name}?secret=S   the guest's cloud-init says it is up (internal)
    GET    /healthz, /readyz       liveness; readiness (PostgreSQL answers)

Every /api/v1/vm and /api/v1/ip call needs `Authorization: Bearer TOKEN` (`vmctl token create
--project P`); a token sees only its project's VMs. Errors are JSON: {"error": MESSAGE, "field":
FIELD?}, never a traceback. The OpenAPI document is at /openapi.json.
"""

from vmctl.api.app import create_app

__all__ = ["create_app"]
