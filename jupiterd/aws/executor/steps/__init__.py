"""The step handlers, one module per kind of AWS resource, registered by
step kind; the runner looks a step's handler up here. Every handler has the
signature ``context.Handler``."""

from __future__ import annotations

from collections.abc import Mapping

from jupiterd.aws.executor.context import Handler
from jupiterd.aws.executor.steps import ec2, eip, elb, route53, routes, sns
from jupiterd.core.plan import StepKind

HANDLERS: Mapping[StepKind, Handler] = {
    StepKind.START_STANDBY: ec2.start,
    StepKind.STANDBY_HEALTHY: ec2.healthy,
    StepKind.REGISTER_EARLY: elb.register_early,
    StepKind.SOURCE_DEST_CHECK: ec2.source_dest,
    StepKind.REGISTER_TARGET: elb.register,
    StepKind.ASSOCIATE_EIP: eip.associate,
    StepKind.UPSERT_RECORD: route53.upsert,
    StepKind.REPLACE_ROUTE: routes.replace,
    StepKind.REROUTE_PEER: routes.reroute,
    StepKind.DEREGISTER_TARGET: elb.deregister,
    StepKind.STOP_INSTANCE: ec2.stop,
    StepKind.NOTIFY: sns.notify,
}
