"""What `vmctl reconcile` asks of a node: one read-only survey (scripts/survey.sh), and the two
repairs that are not a VM's delete (a staging directory, a DHCP reservation)."""

from __future__ import annotations

from vmctl.core.nodecmd import script_command
from vmctl.core.survey import (
    NodeSurvey,
    parse_survey,
    remove_staging_command,
    survey_args,
    unreserve_command,
)
from vmctl.services.ports import Runner
from vmctl.services.ports.storage import Storage

SURVEY_TIMEOUT_S = 120.0


class SurveyMixin:
    runner: Runner
    storage: Storage

    def survey(self, network: str | None = None, images: bool = True) -> NodeSurvey:
        """``images``: list the images of shared storage too (one node of each pool does)."""
        args = survey_args(self.storage.local_dir, network)
        if images:
            args += self.storage.node_args()
        command = script_command("survey.sh", args)
        out = self.runner.run(command, timeout=SURVEY_TIMEOUT_S).stdout
        return parse_survey(self.runner.node, out)

    def remove_staging(self, entry: str) -> None:
        self.runner.run(remove_staging_command(self.storage.local_dir, entry))

    def unreserve(self, network: str, mac: str, ip: str) -> None:
        self.runner.run(unreserve_command(network, mac, ip))
