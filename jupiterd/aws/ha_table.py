"""The table replicated deciders share (``jupiterd ha init``): one string
key ``pk``, on-demand capacity, TTL on ``TTL_ATTRIBUTE`` for stale items.
The leader lease (``jupiterd.aws.lease``) is one item in it."""

from __future__ import annotations

import asyncio

from jupiterd.aws.client import Aws, AwsError

TTL_ATTRIBUTE = "ttl"  # epoch seconds; DynamoDB deletes stale items after it


async def create_table(aws: Aws, table: str) -> bool:
    """Create the table (on-demand, ``pk`` string key) with TTL on
    ``TTL_ATTRIBUTE``. False when it existed already; TTL is made sure of
    either way."""
    created = True
    try:
        await aws.call(
            "dynamodb",
            "CreateTable",
            resource=table,
            TableName=table,
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
            Tags=[{"Key": "Application", "Value": "jupiterd"}],
        )
    except AwsError as exc:
        if exc.code != "ResourceInUseException":
            raise
        created = False
    for _ in range(120):
        d = await aws.call("dynamodb", "DescribeTable", resource=table, TableName=table)
        if d["Table"]["TableStatus"] == "ACTIVE":
            break
        await asyncio.sleep(1.0)
    ttl = await aws.call("dynamodb", "DescribeTimeToLive", resource=table, TableName=table)
    status = ttl.get("TimeToLiveDescription", {}).get("TimeToLiveStatus")
    if status not in ("ENABLED", "ENABLING"):
        await aws.call(
            "dynamodb",
            "UpdateTimeToLive",
            resource=table,
            TableName=table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
        )
    return created
