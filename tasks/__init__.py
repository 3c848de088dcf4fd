"""SeqIO registrations: importing `prompt_tuning.tasks` registers every task below."""

from prompt_tuning.tasks import glue  # pylint: disable=unused-import
from prompt_tuning.tasks import glue_transfer  # pylint: disable=unused-import
from prompt_tuning.tasks import qa  # pylint: disable=unused-import
from prompt_tuning.tasks import super_glue  # pylint: disable=unused-import
