"""The Pulumi program: read and check the one stack config, build the cloud's stack, export its outputs."""

import pulumi

from infra.config import PROJECT, ConfigError
from infra.stack import build_stack, program_config

try:
    # The keys' rules, the warnings (pulumi.log.warn), then what a deployment cannot use: all before any cloud call.
    config = program_config(pulumi.get_stack(), pulumi.Config(PROJECT).get)
except ConfigError as e:
    raise pulumi.RunError(str(e)) from None

for key, value in build_stack(config).items():
    pulumi.export(key, value)
