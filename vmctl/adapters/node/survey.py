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

SURVEY_TIMEOUT_S = 120.0


class SurveyMixin:
    runner: Runner

    def survey(self, storage_dir: str, network: str | None = None) -> NodeSurvey:
        command = script_command("survey.sh", survey_args(storage_dir, network))
        out = self.runner.run(command, timeout=SURVEY_TIMEOUT_S).stdout
        return parse_survey(self.runner.node, out)

    def remove_staging(self, storage_dir: str, entry: str) -> None:
        self.runner.run(remove_staging_command(storage_dir, entry))

    def unreserve(self, network: str, mac: str, ip: str) -> None:
        self.runner.run(unreserve_command(network, mac, ip))
