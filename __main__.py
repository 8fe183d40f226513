"""The Pulumi program: read the one validated stack config, build the cloud's stack, export its outputs."""

import pulumi

from infra.config import PROJECT, ConfigError, from_pulumi
from infra.stack import build_stack

try:
    config = from_pulumi(pulumi.get_stack(), pulumi.Config(PROJECT).get)
except ConfigError as e:
    raise pulumi.RunError(str(e)) from None

for key, value in build_stack(config).items():
    pulumi.export(key, value)
